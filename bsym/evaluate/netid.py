"""Unsupervised network identification from ROI embeddings, always beside FC rows.

ROI embeddings (per scan, mean over windows) are averaged over subjects, giving one
vector per ROI. Those vectors are clustered with k-means and spectral clustering
(k = the number of atlas networks) and scored against the atlas networks by the adjusted
Rand index and normalised mutual information; a k-nearest-neighbour classifier
(cosine distance, leave-one-ROI-out) gives the network classification accuracy. The same
is done on the rows of the group-mean FC matrix (Fisher z, diagonal 0), the baseline.
Features are z-scored per dimension across ROIs first.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd

from bsym.evaluate import EvaluationError
from bsym.evaluate.results import config_hash, log_evaluation, provenance

METRICS = ("ari_kmeans", "nmi_kmeans", "ari_spectral", "nmi_spectral", "knn_accuracy",
           "knn_balanced_accuracy", "majority_rate")
BASELINE = "fc_rows"


def roi_networks(cohort) -> np.ndarray:
    """Network label per ROI (None where unknown); error when the atlas has none."""
    rois = cohort.rois
    if "network" not in rois.columns or rois["network"].isna().all():
        raise EvaluationError(f"the store {cohort.path} has no network labels for its ROIs; "
                              "network identification needs an atlas with networks")
    return rois["network"].to_numpy(dtype=object)


def group_fc(cohort, scans=None, *, progress=False) -> np.ndarray:
    """Mean Fisher-z FC over scans, diagonal 0 (ROIs x ROIs)."""
    from tqdm.auto import tqdm

    from bsym.data.features import fc_matrix, fisher_z

    scans = list(cohort.scans if scans is None else scans)
    total = np.zeros((cohort.n_rois, cohort.n_rois))
    for scan in tqdm(scans, desc="group FC", unit="scan", disable=not progress):
        total += fisher_z(fc_matrix(np.asarray(cohort.bold(scan))))
    mean = total / len(scans)
    np.fill_diagonal(mean, 0.0)
    return mean


def knn_leave_one_out(features, labels, n_neighbors=5) -> np.ndarray:
    """Leave-one-out k-NN predictions with cosine distance (ties: the nearest tied class)."""
    x = np.asarray(features, dtype=float)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    distance = 1.0 - x @ x.T
    np.fill_diagonal(distance, np.inf)
    k = max(1, min(int(n_neighbors), len(x) - 1))
    labels = np.asarray(labels)
    predictions = []
    for i in range(len(x)):
        order = np.argsort(distance[i], kind="stable")[:k]
        votes = pd.Series(labels[order]).value_counts()
        tied = set(votes.index[votes == votes.max()])
        predictions.append(next(labels[j] for j in order if labels[j] in tied))
    return np.asarray(predictions)


def identify_networks(features, networks, *, seed=0, n_neighbors=5) -> dict:
    """Scores of one ROI-feature matrix against the atlas networks.

    Parameters
    ----------
    features : array, shape (n_rois, n_features)
    networks : array, shape (n_rois,)
        Network labels; ROIs labelled None are left out.
    seed : int
        Seeds k-means and spectral clustering.
    n_neighbors : int
        k of the k-NN classifier.

    Returns
    -------
    dict
        Metrics (see :data:`METRICS`), ``confusion`` (networks x networks counts of the
        k-NN predictions), ``networks`` (row/column order), ``kmeans`` and ``spectral``
        cluster labels, ``knn`` predictions.
    """
    from sklearn.cluster import KMeans, SpectralClustering
    from sklearn.metrics import (
        adjusted_rand_score,
        balanced_accuracy_score,
        confusion_matrix,
        normalized_mutual_info_score,
    )
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, dtype=float)
    networks = np.asarray(networks, dtype=object)
    if features.ndim != 2 or len(features) != len(networks):
        raise EvaluationError(f"expected ROI features shaped (n_rois, n_features) with "
                              f"{len(networks)} ROIs, received {features.shape}")
    known = np.array([n is not None and not (isinstance(n, float) and np.isnan(n))
                      for n in networks])
    x, labels = features[known], networks[known].astype(str)
    names = sorted(set(labels))
    k = len(names)
    if k < 2 or len(x) <= k:
        raise EvaluationError(f"network identification needs >= 2 networks and more ROIs than "
                              f"networks; received {k} networks over {len(x)} ROIs")
    z = StandardScaler().fit_transform(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kmeans = KMeans(n_clusters=k, n_init=20, random_state=seed).fit_predict(z)
        spectral = SpectralClustering(
            n_clusters=k, affinity="nearest_neighbors",
            n_neighbors=max(2, min(10, len(z) - 1, len(z) // k + 1)),
            random_state=seed, assign_labels="cluster_qr").fit_predict(z)
    knn = knn_leave_one_out(z, labels, n_neighbors)
    counts = pd.Series(labels).value_counts()
    return {
        "ari_kmeans": float(adjusted_rand_score(labels, kmeans)),
        "nmi_kmeans": float(normalized_mutual_info_score(labels, kmeans)),
        "ari_spectral": float(adjusted_rand_score(labels, spectral)),
        "nmi_spectral": float(normalized_mutual_info_score(labels, spectral)),
        "knn_accuracy": float(np.mean(knn == labels)),
        "knn_balanced_accuracy": float(balanced_accuracy_score(labels, knn)),
        "majority_rate": float(counts.max() / counts.sum()),
        "n_rois": int(len(x)), "n_networks": int(k),
        "confusion": confusion_matrix(labels, knn, labels=names), "networks": names,
        "kmeans": kmeans, "spectral": spectral, "knn": knn,
    }


def plot_confusions(scores, path, *, title=None):
    """Row-normalised k-NN confusion matrices side by side (model(s) and FC rows)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(scores)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        s = scores[name]
        cm = np.asarray(s["confusion"], dtype=float)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, vmin=0, vmax=1, cmap="viridis")
        ticks = np.arange(len(s["networks"]))
        ax.set_xticks(ticks, s["networks"], rotation=60, ha="right", fontsize=7)
        ax.set_yticks(ticks, s["networks"], fontsize=7)
        ax.set_xlabel("predicted network")
        ax.set_ylabel("atlas network")
        ax.set_title(f"{name}\nk-NN acc {s['knn_accuracy']:.2f}, ARI {s['ari_kmeans']:.2f}",
                     fontsize=9)
        for i in range(len(cm)):
            for j in range(len(cm)):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] < 0.6 else "black")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def network_identification(embeddings, cohort, *, view=None, subjects=None, seed=0,
                           n_neighbors=5, model=None, dataset=None, results=None,
                           figure=None, tracker=None, force=False,
                           progress=False) -> pd.DataFrame:
    """Network identification of a model's ROI embeddings and of FC rows, side by side.

    Parameters
    ----------
    embeddings : EmbeddingSet
        With ROI embeddings (checked against ``cohort``).
    cohort : Cohort
    view : str, optional
    subjects : sequence of str, optional
        Average over these subjects only (default all embedded subjects).
    seed, n_neighbors
        See :func:`identify_networks`.
    model, dataset : str, optional
        Names in the result rows.
    results : ResultTable, optional
        Rows (protocol ``network_identification``, task ``networks``, fold 0) are
        appended; a current row is read back instead of recomputed unless ``force``.
    figure : str or Path, optional
        Confusion-matrix figure (PNG/PDF/SVG).
    tracker : Tracker, optional
    force : bool
    progress : bool
        Progress bars (group FC over scans, then the two identifications).

    Returns
    -------
    DataFrame
        Two rows: the model and the ``fc_rows`` baseline.
    """
    from pathlib import Path

    embeddings.check_cohort(cohort)
    view = embeddings.view_name(view)
    networks = roi_networks(cohort)
    model = model or embeddings.model
    dataset = dataset or cohort.path.name
    chash = config_hash({"seed": seed, "n_neighbors": n_neighbors, "view": view,
                         "embedding_key": embeddings.key(view),
                         "subjects": sorted(subjects) if subjects is not None else None})
    keys = [{"model": name, "view": v, "dataset": dataset, "task": "networks",
             "protocol": "network_identification", "seed": int(seed), "fold": 0,
             "config_hash": chash, "manifest_hash": cohort.manifest_hash, "split_hash": None}
            for name, v in ((model, view), (BASELINE, "fc"))]
    if results is not None and not force and figure is None and \
            all(results.is_done(k) for k in keys):
        return pd.DataFrame([results.find(k) for k in keys])
    roi, subject_ids = embeddings.subject_roi(view, subjects)
    scans = embeddings.scans[embeddings.scans["subject"].isin(set(subject_ids))]["scan"]
    from tqdm.auto import tqdm

    scores, rows = {}, []
    steps = ((keys[0], lambda: roi.mean(axis=0)),
             (keys[1], lambda: group_fc(cohort, scans, progress=progress)))
    for key, make in tqdm(steps, desc="network identification", unit="model",
                          disable=not progress):
        started = time.perf_counter()
        s = identify_networks(make(), networks, seed=seed, n_neighbors=n_neighbors)
        scores[f"{key['model']} ({key['view']})"] = s
        rows.append({**key, "repeat": 0, **{m: s[m] for m in METRICS},
                     "n_rois": s["n_rois"], "n_networks": s["n_networks"],
                     "n_train": len(subject_ids), "n_test": s["n_rois"],
                     "runtime_s": time.perf_counter() - started,
                     "embedding_key": embeddings.key(view) if key is keys[0] else None,
                     "checkpoint_sha256": embeddings.meta.get("checkpoint_sha256")
                     if key is keys[0] else None, **provenance()})
    if figure is not None:
        plot_confusions(scores, Path(figure), title=f"network identification: {dataset}")
    if results is not None:
        results.append(rows)
    for row in rows:
        log_evaluation(tracker, [row], run_name=f"netid-{row['model']}",
                       tags={k: row[k] for k in ("model", "view", "dataset", "task", "protocol",
                                                 "seed")},
                       params={"n_neighbors": n_neighbors, "view": row["view"]}, metrics=METRICS)
    return pd.DataFrame(rows)
