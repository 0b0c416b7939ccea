"""Unsupervised network identification from ROI embeddings, beside baselines and controls.

ROI embeddings (per scan, mean over windows) are averaged over subjects, giving one
vector per ROI. Those vectors are clustered with k-means and spectral clustering
(k = the number of atlas networks) and scored against the atlas networks by the adjusted
Rand index and normalised mutual information; a k-nearest-neighbour classifier
(cosine distance, leave-one-ROI-out) gives the network classification accuracy. Features
are z-scored per dimension across ROIs first. Clustering is repeated over several seeds
(one row per seed), so a score comes with its spread.

Beside a model's scores, with the same seeds:

- the baselines: rows of the group-mean FC matrix (``fc_rows``: Fisher z, diagonal 0)
  and of the group-mean log SC matrix (``sc_rows``, where the store has SC);
- ``position_only``: the ROI embeddings the model gives for all-zero data, i.e. what its
  ROI identity (position code) alone carries, at the final weights and at the initial
  ones (``checkpoint="step0"``). Atlases number ROIs network by network, so a fixed
  position code can "identify" networks without looking at the data; on a store with a
  shuffled ROI order it cannot, and what a learned code carries at the end it learned
  from the data;
- ``random_init``: the ROI embeddings of the same architecture at its initial weights;
- ``permuted_networks``: the chance level, the model's (and each baseline's) features
  scored against randomly permuted network labels (``replicate`` numbers them).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bsym.evaluate import EvaluationError
from bsym.evaluate.loop import run_units
from bsym.evaluate.results import config_hash, log_evaluation, provenance
from bsym.evaluate.seeding import PERMUTED_NETWORKS, random_stream
from bsym.outputs import save_figure

METRICS = ("ari_kmeans", "nmi_kmeans", "ari_spectral", "nmi_spectral", "knn_accuracy",
           "knn_balanced_accuracy", "majority_rate")
BASELINE = "fc_rows"
SC_BASELINE = "sc_rows"


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
    names, codes = np.unique(labels, return_inverse=True)
    nearest = np.argsort(distance, axis=1, kind="stable")[:, :k]
    votes = codes[nearest]                                    # (n, k), nearest first
    counts = np.zeros((len(x), len(names)), dtype=int)
    np.add.at(counts, (np.arange(len(x))[:, None], votes), 1)
    tied = counts[np.arange(len(x))[:, None], votes] == counts.max(axis=1, keepdims=True)
    first = votes[np.arange(len(x)), tied.argmax(axis=1)]     # the nearest tied class
    return names[first]


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
    from sklearn.metrics import confusion_matrix
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, dtype=float)
    networks = np.asarray(networks, dtype=object)
    if features.ndim != 2 or len(features) != len(networks):
        raise EvaluationError(f"expected ROI features shaped (n_rois, n_features) with "
                              f"{len(networks)} ROIs, received {features.shape}")
    known = _known(networks)
    x, labels = features[known], networks[known].astype(str)
    names = sorted(set(labels))
    k = len(names)
    if k < 2 or len(x) <= k:
        raise EvaluationError(f"network identification needs >= 2 networks and more ROIs than "
                              f"networks; received {k} networks over {len(x)} ROIs")
    z = StandardScaler().fit_transform(x)
    kmeans, spectral = _clusters(z, k, seed)
    knn = knn_leave_one_out(z, labels, n_neighbors)
    return {**_agreement(labels, kmeans, spectral, knn),
            "n_rois": int(len(x)), "n_networks": int(k),
            "confusion": confusion_matrix(labels, knn, labels=names), "networks": names,
            "kmeans": kmeans, "spectral": spectral, "knn": knn}


def _known(networks):
    """Mask of the ROIs with a network label (not None or NaN)."""
    return np.array([n is not None and not (isinstance(n, float) and np.isnan(n))
                     for n in networks])


def _clusters(z, k, seed):
    """k-means and spectral cluster labels of standardised ROI features."""
    from sklearn.cluster import KMeans, SpectralClustering

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kmeans = KMeans(n_clusters=k, n_init=20, random_state=seed).fit_predict(z)
        spectral = SpectralClustering(
            n_clusters=k, affinity="nearest_neighbors",
            n_neighbors=max(2, min(10, len(z) - 1, len(z) // k + 1)),
            random_state=seed, assign_labels="cluster_qr").fit_predict(z)
    return kmeans, spectral


def _agreement(labels, kmeans, spectral, knn) -> dict:
    """The :data:`METRICS` of cluster labels and k-NN predictions against network labels."""
    from sklearn.metrics import adjusted_rand_score, balanced_accuracy_score
    from sklearn.metrics import normalized_mutual_info_score as nmi

    counts = pd.Series(labels).value_counts()
    return {"ari_kmeans": float(adjusted_rand_score(labels, kmeans)),
            "nmi_kmeans": float(nmi(labels, kmeans)),
            "ari_spectral": float(adjusted_rand_score(labels, spectral)),
            "nmi_spectral": float(nmi(labels, spectral)),
            "knn_accuracy": float(np.mean(knn == labels)),
            "knn_balanced_accuracy": float(balanced_accuracy_score(labels, knn)),
            "majority_rate": float(counts.max() / counts.sum())}


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
    try:
        return save_figure(fig, path, what="the confusion-matrix figure", dpi=120)
    finally:
        plt.close(fig)


def group_sc(cohort, subjects) -> np.ndarray:
    """Mean log(1 + SC) over subjects, diagonal 0 (ROIs x ROIs)."""
    from bsym.data.features import log_sc

    total = np.zeros((cohort.n_rois, cohort.n_rois))
    for subject in subjects:
        total += log_sc(np.asarray(cohort.sc(subject)))
    mean = total / len(subjects)
    np.fill_diagonal(mean, 0.0)
    return mean


def chance_scores(features, networks, clusters, *, permutations=20, n_neighbors=5, seed=0):
    """Scores of fixed clusterings and k-NN against permuted network labels.

    Returns a list of metric dicts, one per permutation (the chance level of
    :func:`identify_networks` for these features and network sizes).
    """
    from sklearn.preprocessing import StandardScaler

    networks = np.asarray(networks, dtype=object)
    known = _known(networks)
    z = StandardScaler().fit_transform(np.asarray(features, dtype=float)[known])
    labels = networks[known].astype(str)
    rng = random_stream(seed, purpose=PERMUTED_NETWORKS)
    out = []
    for _ in range(int(permutations)):
        shuffled = rng.permutation(labels)
        knn = knn_leave_one_out(z, shuffled, n_neighbors)
        out.append(_agreement(shuffled, clusters["kmeans"], clusters["spectral"], knn))
    return out


def network_identification(embeddings, cohort, *, view=None, subjects=None, seeds=10,
                           n_neighbors=5, permutations=20, random_init=None, model=None,
                           dataset=None, results=None, figure=None, tracker=None, force=False,
                           progress=False) -> pd.DataFrame:
    """Network identification of a model's ROI embeddings beside baselines and controls.

    Parameters
    ----------
    embeddings : EmbeddingSet
        With ROI embeddings (checked against ``cohort``); position-only ROI embeddings,
        when the file has them, give the ``position_only`` control.
    cohort : Cohort
    view : str, optional
    subjects : sequence of str, optional
        Average over these subjects only (default all embedded subjects).
    seeds : int or sequence of int
        Clustering seeds (an int ``n`` means ``0 .. n-1``): one row per seed.
    n_neighbors : int
        k of the k-NN classifier.
    permutations : int
        Permutations of the network labels for the chance level (0: none).
    random_init : EmbeddingSet, optional
        Embeddings of the same run's initial weights (the ``random_init`` control).
    model, dataset : str, optional
        Names in the result rows.
    results : ResultTable, optional
        Rows (protocol ``network_identification``, task ``networks``, fold 0, ``seed`` =
        clustering seed) are appended; current rows are read back instead of recomputed
        unless ``force``.
    figure : str or Path, optional
        Confusion-matrix figure (PNG/PDF/SVG) of the first seed.
    tracker : Tracker, optional
        MLflow: one run per feature set (mean over seeds).
    force, progress : bool

    Returns
    -------
    DataFrame
        One row per feature set x control x seed (and per permutation of the chance level).
    """
    embeddings.check_cohort(cohort)
    view = embeddings.view_name(view)
    networks = roi_networks(cohort)
    seeds = list(range(int(seeds))) if np.isscalar(seeds) else [int(s) for s in seeds]
    if not seeds:
        raise EvaluationError("network identification needs at least one clustering seed")
    chash = config_hash({"seeds": seeds, "n_neighbors": n_neighbors, "view": view,
                         "permutations": int(permutations),
                         "embedding_key": embeddings.key(view),
                         "random_init": random_init.key(view) if random_init else None,
                         "subjects": sorted(subjects) if subjects is not None else None})
    roi, subject_ids = embeddings.subject_roi(view, subjects)
    scans = embeddings.scans[embeddings.scans["subject"].isin(set(subject_ids))]["scan"]
    dataset = dataset or cohort.path.name
    run = _NetworkRun(
        sets=_feature_sets(embeddings, view, model or embeddings.model, roi, random_init,
                           subject_ids, cohort, scans, progress),
        seeds=seeds, networks=networks, n_neighbors=n_neighbors,
        permutations=int(permutations), n_subjects=len(subject_ids), progress=progress,
        common={"dataset": dataset, "task": "networks", "protocol": "network_identification",
                "fold": 0, "config_hash": chash, "manifest_hash": cohort.manifest_hash,
                "split_hash": None},
        figure=figure, title=f"network identification: {dataset} (seed {seeds[0]})")
    # one unit, read back only whole; a figure needs every feature set's scores
    rows, computed = run_units([[None]], run.keys, run.rows, results=results,
                               force=force or figure is not None)
    frame = pd.DataFrame(rows)
    if computed:
        _log_feature_sets(tracker, frame, run.sets, dataset, n_neighbors, len(seeds))
    return frame


@dataclass
class _NetworkRun:
    """The rows of one network identification: per feature set, one per clustering seed,
    then the chance level (one per permutation of the network labels)."""

    sets: list
    seeds: list
    networks: np.ndarray
    n_neighbors: int
    permutations: int
    n_subjects: int
    progress: bool
    common: dict
    figure: object
    title: str

    def keys(self, _unit):
        real = [{**self.common, **s["key"], "seed": seed, "replicate": 0}
                for s in self.sets for seed in self.seeds]
        chance = [{**self.common, **s["key"], "control": "permuted_networks",
                   "seed": self.seeds[0], "replicate": r}
                  for s in self.sets if s["chance"] for r in range(self.permutations)]
        return real + chance

    def rows(self, _unit, _keys):
        """Score every feature set (and draw the figure of the first seed's scores)."""
        from tqdm.auto import tqdm

        rows, first = [], {}
        for entry in tqdm(self.sets, desc="network identification", unit="feature set",
                          disable=not self.progress):
            features = entry["make"]()
            for seed in self.seeds:
                started = time.perf_counter()
                scores = identify_networks(features, self.networks, seed=seed,
                                           n_neighbors=self.n_neighbors)
                first.setdefault(entry["title"], scores)
                rows.append(_row(self.common, entry, seed, 0, scores, self.n_subjects,
                                 time.perf_counter() - started))
            if self.permutations and entry["chance"]:
                rows.extend(self._chance_rows(entry, features, first[entry["title"]]))
        if self.figure is not None:
            plot_confusions(first, Path(self.figure), title=self.title)
        return rows

    def _chance_rows(self, entry, features, scores):
        """Rows of the chance level: ``scores``' clusterings against permuted networks."""
        chance_entry = {**entry, "key": {**entry["key"], "control": "permuted_networks"}}
        sizes = {"n_rois": scores["n_rois"], "n_networks": scores["n_networks"]}
        return [_row(self.common, chance_entry, self.seeds[0], r, {**permuted, **sizes},
                     self.n_subjects, 0.0)
                for r, permuted in enumerate(chance_scores(
                    features, self.networks, scores, permutations=self.permutations,
                    n_neighbors=self.n_neighbors))]


def _log_feature_sets(tracker, frame, sets, dataset, n_neighbors, n_seeds):
    """MLflow: one run per feature set, its metrics the means over seeds."""
    for entry in sets:
        key = entry["key"]
        mine = frame[(frame[list(key)] == pd.Series(key)).all(axis=1)]
        summary = {k: mine[k].mean() for k in METRICS}
        log_evaluation(tracker, [{**mine.iloc[0].to_dict(), **summary}],
                       tags={**key, "dataset": dataset, "task": "networks",
                             "protocol": "network_identification"},
                       params={"n_neighbors": n_neighbors, "seeds": n_seeds}, metrics=METRICS)


def _feature_sets(embeddings, view, model, roi, random_init, subject_ids, cohort, scans,
                  progress):
    """What is scored: ``{"key", "title", "make", "chance", "embedding_key"}`` per feature
    set (``make()`` computes its ROI features; ``chance``: scored against permuted networks
    too)."""
    def entry(control, checkpoint, title, make, source, *, name=model, of_view=view,
              chance=False):
        return {"key": {"model": name, "view": of_view, "control": control,
                        "checkpoint": checkpoint},
                "title": title, "make": make, "chance": chance,
                "embedding_key": source.key(view) if source is not None else None}

    point = embeddings.checkpoint_label
    sets = [entry("none", point, f"{model} ({view})", lambda: roi.mean(axis=0), embeddings,
                  chance=True)]
    position = embeddings.position(view)
    if position is not None:
        sets.append(entry("position_only", point, f"{model} ({view}): position only",
                          lambda: np.asarray(position, dtype=float), embeddings))
    if random_init is not None:
        random_init.check_cohort(cohort)
        init_roi, _ = random_init.subject_roi(view, subject_ids)
        init_point = random_init.checkpoint_label
        sets.append(entry("random_init", init_point, f"{model} ({view}): random init",
                          lambda: init_roi.mean(axis=0), random_init))
        init_position = random_init.position(view)
        if init_position is not None:  # the position code before any training
            sets.append(entry("position_only", init_point,
                              f"{model} ({view}): position only, random init",
                              lambda: np.asarray(init_position, dtype=float), random_init))
    sets.append(entry("none", "final", "FC rows",
                      lambda: group_fc(cohort, scans, progress=progress), None,
                      name=BASELINE, of_view="fc", chance=True))
    if "sc" in cohort.matrices:
        sets.append(entry("none", "final", "SC rows", lambda: group_sc(cohort, subject_ids),
                          None, name=SC_BASELINE, of_view="sc", chance=True))
    return sets


def _row(common, entry, seed, replicate, scores, n_subjects, runtime):
    return {**common, **entry["key"], "seed": int(seed), "replicate": int(replicate),
            "repeat": 0, **{m: scores[m] for m in METRICS}, "n_rois": scores["n_rois"],
            "n_networks": scores["n_networks"], "n_train": n_subjects,
            "n_test": scores["n_rois"], "runtime_s": runtime,
            "embedding_key": entry["embedding_key"], **provenance()}
