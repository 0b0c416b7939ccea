"""Attention maps per ROI and network, contrasted between conditions.

A model's ``attention(batch)`` gives ROI x ROI maps (a tensor or a dict of them, shaped
``(B, R, R)``, ``(B, heads, R, R)`` or ``(layers, B, heads, R, R)``); they are averaged
over layers and heads, then over the windows of each scan. Entry ``A[i, j]`` is the
attention query ROI ``i`` pays to key ROI ``j``. Summaries (self-attention left out):

``roi_in`` / ``roi_out``
    Attention mass a ROI receives (column sum) / gives to other ROIs (row sum).
``net_in`` / ``net_out``
    Their means over each network's ROIs.
``net_pair``
    Network x network: mean attention from a ROI of the row network to a ROI of the
    column network.

Per subject and condition the scans are averaged; two conditions are contrasted with a
sign-flip permutation test of the paired differences (the same subjects in both
conditions, e.g. pre vs post) or a label-permutation test (two groups of subjects),
on the t statistic, and p-values are corrected by Benjamini-Hochberg FDR within each
summary family (statsmodels).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bsym.evaluate import EvaluationError
from bsym.outputs import save_figure

FAMILIES = ("roi_in", "roi_out", "net_in", "net_out", "net_pair")


@dataclass
class AttentionSet:
    """Attention maps averaged per scan.

    Attributes
    ----------
    scans : DataFrame
        ``scan``, ``subject``, ``session``, ``n_windows``.
    maps : dict
        Map name -> array (n_scans, R, R).
    meta : dict
    """

    scans: pd.DataFrame
    maps: dict
    meta: dict = field(default_factory=dict)

    def map_name(self, name=None) -> str:
        if name is None:
            if len(self.maps) == 1:
                return next(iter(self.maps))
            raise EvaluationError(f"the model gives attention maps {sorted(self.maps)}; name "
                                  "one (map=... / --map)")
        if name not in self.maps:
            raise EvaluationError(f"no attention map {name!r}; expected one of {sorted(self.maps)}")
        return name


def roi_maps(output, n_rois, names=None) -> dict:
    """ROI x ROI maps of one batch, averaged over layers and heads: name -> (B, R, R).

    A plain tensor may be ``(B, R, R)``, ``(B, H, R, R)`` or ``(L, B, H, R, R)``; in a dict,
    entries whose last two dimensions are not ``(R, R)`` (or that are 3-D, unless named)
    are skipped.
    """
    import torch

    entries = {"attention": output} if isinstance(output, torch.Tensor) else dict(output)
    picked = {}
    for name, value in entries.items():
        if names is not None and name not in names:
            continue
        if not isinstance(value, torch.Tensor) or value.ndim < 3 or \
                tuple(value.shape[-2:]) != (n_rois, n_rois):
            if names is not None:
                raise EvaluationError(f"attention map {name!r} is shaped "
                                      f"{tuple(getattr(value, 'shape', ()))}; expected "
                                      f"(..., {n_rois}, {n_rois})")
            continue
        if value.ndim == 3 and names is None and not isinstance(output, torch.Tensor):
            continue  # e.g. a (B, R, d) gate whose d happens to equal R
        value = value.detach().float()
        if value.ndim == 5:
            value = value.mean(dim=(0, 2))
        elif value.ndim == 4:
            value = value.mean(dim=1)
        elif value.ndim != 3:
            raise EvaluationError(f"attention map {name!r} has {value.ndim} dimensions; "
                                  "expected 3 to 5")
        picked[name] = value
    if names is not None:
        missing = sorted(set(names) - set(picked))
        if missing:
            raise EvaluationError(f"the model gives no attention map {missing}; it gives "
                                  f"{sorted(entries)}")
    if not picked:
        raise EvaluationError(f"the model's attention has no ROI x ROI map ({n_rois} x {n_rois}); "
                              f"it gives {sorted(entries)}")
    return picked


def attention_maps(model, cohort, *, window, stride=None, scaler=None, target_tr=None,
                   cleaning=None, sc_transform="log1p", scans=None, maps=None, batch_size=16,
                   device="cpu", progress=True) -> AttentionSet:
    """Attention maps of every scan (mean over its windows and over layers and heads).

    Parameters
    ----------
    model : BrainModel
        With an ``attention(batch)`` method.
    cohort : Cohort
    window, stride, scaler, target_tr, cleaning, sc_transform
        Windowing and scaling as in training (see
        :func:`bsym.evaluate.embeddings.compute_embeddings`).
    scans : sequence of str, optional
    maps : sequence of str, optional
        Map names to keep (default every ROI x ROI map).
    batch_size, device, progress

    Returns
    -------
    AttentionSet
    """
    from bsym.data.dataset import WindowDataset
    from bsym.evaluate.embeddings import window_means

    dataset = WindowDataset(cohort, window, scans=scans, stride=stride, scaler=scaler,
                            target_tr=target_tr, cleaning=cleaning, sc_transform=sc_transform)

    def outputs(batch):
        try:
            output = model.attention(batch)
        except NotImplementedError as err:
            raise EvaluationError(f"model {getattr(model, 'name', type(model).__name__)!r} "
                                  f"has no attention maps ({err})") from None
        return roi_maps(output, cohort.n_rois, maps)

    table, n_windows, means = window_means(model, dataset, outputs, batch_size=batch_size,
                                           device=device, desc="attention", progress=progress)
    scan_table = table[["scan", "subject", "session"]].astype(str).copy()
    scan_table["n_windows"] = n_windows
    return AttentionSet(scans=scan_table,
                        maps=means,
                        meta={"manifest_hash": cohort.manifest_hash, "window": int(window)})


def attention_checkpoint(checkpoint, cohort, *, maps=None, batch_size=16, device="cpu",
                         progress=True) -> AttentionSet:
    """:func:`attention_maps` of a trained checkpoint, with its window and scaler."""
    from bsym.data.preprocess import RobustScaler, SignalCleaning
    from bsym.evaluate.embeddings import _checkpoint_settings
    from bsym.io import file_sha256
    from bsym.train.checkpoint import check_fits_store, load_trained

    model, ckpt = load_trained(checkpoint)
    check_fits_store(ckpt, checkpoint, cohort)
    settings = _checkpoint_settings(ckpt)
    state = (ckpt.get("extra") or {}).get("scaler")
    out = attention_maps(model, cohort, window=settings["window"],
                         scaler=RobustScaler.from_state_dict(state) if state else None,
                         target_tr=settings["target_tr"],
                         cleaning=SignalCleaning(**settings["cleaning"]),
                         sc_transform=settings["sc_transform"], maps=maps,
                         batch_size=batch_size, device=device, progress=progress)
    out.meta.update(model=ckpt["model"]["name"], checkpoint_sha256=file_sha256(checkpoint))
    return out


# -- summaries -----------------------------------------------------------------------------
def summarise(maps, networks, roi_names=None) -> dict:
    """Per-scan summaries of ROI x ROI maps.

    Parameters
    ----------
    maps : array, shape (n, R, R)
    networks : array of str, shape (R,)
    roi_names : sequence of str, optional

    Returns
    -------
    dict
        Family -> ``(values (n, F), features DataFrame)`` with ``feature``, ``source`` and
        ``target`` columns naming each of the F features.
    """
    a = np.asarray(maps, dtype=float).copy()
    n, r, _ = a.shape
    roi_names = list(roi_names) if roi_names is not None else [f"roi{i}" for i in range(r)]
    networks = np.asarray(networks, dtype=object)
    idx = np.arange(r)
    a[:, idx, idx] = 0.0
    roi_in, roi_out = a.sum(axis=1), a.sum(axis=2)
    names = sorted({str(x) for x in networks if x is not None})
    members = [np.flatnonzero(networks.astype(str) == k) for k in names]
    out = {
        "roi_in": (roi_in, pd.DataFrame({"feature": roi_names, "source": None,
                                         "target": roi_names})),
        "roi_out": (roi_out, pd.DataFrame({"feature": roi_names, "source": roi_names,
                                           "target": None})),
        "net_in": (np.stack([roi_in[:, m].mean(axis=1) for m in members], axis=1),
                   pd.DataFrame({"feature": names, "source": None, "target": names})),
        "net_out": (np.stack([roi_out[:, m].mean(axis=1) for m in members], axis=1),
                    pd.DataFrame({"feature": names, "source": names, "target": None})),
    }
    pair_values, pair_rows = [], []
    for i, mi in enumerate(members):
        for j, mj in enumerate(members):
            block = a[:, mi][:, :, mj]
            count = len(mi) * len(mj) - (len(mi) if i == j else 0)
            pair_values.append(block.sum(axis=(1, 2)) / max(count, 1))
            pair_rows.append({"feature": f"{names[i]}->{names[j]}", "source": names[i],
                              "target": names[j]})
    out["net_pair"] = (np.stack(pair_values, axis=1), pd.DataFrame(pair_rows))
    return out


# -- tests ---------------------------------------------------------------------------------
def _t(mean, sumsq, n):
    var = np.maximum(sumsq - n * mean ** 2, 0.0) / (n - 1)
    sd = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(sd > 0, mean / (sd / np.sqrt(n)), 0.0)
    return t


def sign_flip_test(differences, *, n_permutations=10000, seed=0):
    """Paired permutation test: flip the sign of each subject's difference.

    Parameters
    ----------
    differences : array, shape (n_subjects, n_features)
    n_permutations : int
        Random sign patterns; all 2^n patterns when that is fewer.
    seed : int

    Returns
    -------
    t : array (n_features,)
        One-sample t statistic of the differences.
    p : array (n_features,)
        Two-sided permutation p-values (the observed pattern counted).
    """
    d = np.asarray(differences, dtype=float)
    if d.ndim == 1:
        d = d[:, None]
    n = len(d)
    if n < 2:
        raise EvaluationError(f"a paired test needs at least 2 subjects, received {n}")
    sumsq = (d ** 2).sum(axis=0)  # unchanged by sign flips
    t_obs = _t(d.mean(axis=0), sumsq, n)
    if 2 ** n <= n_permutations:
        codes = np.arange(2 ** n)
        signs = 1 - 2 * ((codes[:, None] >> np.arange(n)) & 1)
        exhaustive = True
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(int(n_permutations), n))
        exhaustive = False
    exceed = np.zeros(d.shape[1])
    for start in range(0, len(signs), 2048):
        chunk = signs[start:start + 2048].astype(float)
        t_perm = _t(chunk @ d / n, sumsq, n)
        exceed += (np.abs(t_perm) >= np.abs(t_obs) - 1e-12).sum(axis=0)
    p = exceed / len(signs) if exhaustive else (exceed + 1) / (len(signs) + 1)
    return t_obs, np.minimum(p, 1.0)


def _welch(a, b):
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    va, vb = a.var(axis=0, ddof=1) / len(a), b.var(axis=0, ddof=1) / len(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(va + vb > 0, (mb - ma) / np.sqrt(va + vb), 0.0)


def permutation_test(a, b, *, n_permutations=10000, seed=0):
    """Two-group permutation test of Welch's t (``b`` minus ``a``): ``(t, p)``."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise EvaluationError(f"a two-group test needs at least 2 subjects per group, received "
                              f"{len(a)} and {len(b)}")
    pooled = np.concatenate([a, b])
    t_obs = _welch(a, b)
    rng = np.random.default_rng(seed)
    exceed = np.zeros(pooled.shape[1])
    for _ in range(int(n_permutations)):
        order = rng.permutation(len(pooled))
        t_perm = _welch(pooled[order[:len(a)]], pooled[order[len(a):]])
        exceed += np.abs(t_perm) >= np.abs(t_obs) - 1e-12
    return t_obs, (exceed + 1) / (int(n_permutations) + 1)


def _per_subject(values, scans, subjects):
    frame = pd.DataFrame(values)
    frame["subject"] = scans["subject"].to_numpy()
    weights = scans["n_windows"].to_numpy(dtype=float)
    weighted = frame.drop(columns="subject").mul(weights, axis=0)
    weighted["subject"] = frame["subject"]
    sums = weighted.groupby("subject").sum()
    totals = pd.Series(weights, index=frame.index).groupby(frame["subject"]).sum()
    return (sums.div(totals, axis=0)).loc[subjects].to_numpy()


@dataclass
class ContrastResult:
    """Outcome of :func:`contrast_attention`.

    Attributes
    ----------
    table : DataFrame
        One row per map, family and feature: means per condition, difference, t, effect
        size, p, FDR q, significant.
    levels : tuple
        ``(a, b)``; differences are ``b - a``.
    paired : bool
    subjects : list
    networks : list
    """

    table: pd.DataFrame
    levels: tuple
    paired: bool
    subjects: list
    networks: list

    def significant(self, family=None, map=None) -> pd.DataFrame:
        t = self.table[self.table["significant"]]
        if family is not None:
            t = t[t["family"] == family]
        if map is not None:
            t = t[t["map"] == map]
        return t


def contrast_attention(attention, cohort, *, factor="condition", levels=None, paired=None,
                       maps=None, n_permutations=10000, alpha=0.05, seed=0) -> ContrastResult:
    """Contrast attention summaries between two levels of ``factor``.

    Parameters
    ----------
    attention : AttentionSet
    cohort : Cohort
        For the factor column and the ROI networks.
    factor : str
        A column of the subjects table (``condition``, ``diagnosis``, ...).
    levels : (str, str), optional
        The two levels; differences are second minus first. Default ``("pre", "post")``
        when those are the levels, else the sorted two levels.
    paired : bool, optional
        Default: paired when the factor varies within subjects.
    maps : sequence of str, optional
        Maps to test (default all).
    n_permutations : int
    alpha : float
        FDR level (Benjamini-Hochberg within each map and family).
    seed : int

    Returns
    -------
    ContrastResult
    """
    from bsym.evaluate.netid import roi_networks

    _check_same_store(attention, cohort)
    values, levels = _factor_levels(attention, cohort, factor, levels)
    if paired is None:
        within = pd.Series(values).groupby(attention.scans["subject"].to_numpy()).nunique()
        paired = bool((within > 1).any())
    networks = roi_networks(cohort)
    roi_names = cohort.rois["name"].tolist()
    design = _design(attention.scans.reset_index(drop=True), values, levels, paired)
    rows = []
    names = attention.maps if maps is None else [attention.map_name(m) for m in maps]
    for name in names:
        families = summarise(attention.maps[name], networks, roi_names)
        for family, (vals, features) in families.items():
            a, b, t, p, effect, n = _compare_levels(vals, design, n_permutations, seed)
            rows.append(_contrast_rows(features, name, family, levels, a, b, t, p, effect, n,
                                       alpha))
    return ContrastResult(table=pd.concat(rows, ignore_index=True), levels=levels,
                          paired=paired, subjects=sorted(design.subjects_a | design.subjects_b),
                          networks=sorted({str(x) for x in networks if x is not None}))


def _check_same_store(attention, cohort):
    if attention.meta.get("manifest_hash") not in (None, cohort.manifest_hash):
        raise EvaluationError("the attention maps were computed on another store (manifest "
                              f"{attention.meta['manifest_hash'][:12]}..., expected "
                              f"{cohort.manifest_hash[:12]}...)")


def _factor_levels(attention, cohort, factor, levels):
    """``(values, levels)``: the factor's value per scan of ``attention`` (as str) and the
    two levels contrasted (default ``("pre", "post")`` when those are the values)."""
    cohort.require(labels=[factor])
    table = cohort.subjects.set_index("scan").loc[attention.scans["scan"]]
    values = table[factor].astype(str).to_numpy()
    observed = sorted(set(values))
    if levels is None:
        levels = ("pre", "post") if set(observed) == {"pre", "post"} else tuple(observed)
    levels = tuple(str(x) for x in levels)
    if len(levels) != 2 or not set(levels) <= set(observed):
        raise EvaluationError(f"expected two levels of {factor!r} among {observed}, received "
                              f"{list(levels)}")
    return values, levels


@dataclass
class _Design:
    """The scans of each level (boolean masks over ``scans``) and the subjects compared:
    ``subjects`` scanned in both levels when paired, else None."""

    scans: pd.DataFrame
    in_a: np.ndarray
    in_b: np.ndarray
    subjects_a: set
    subjects_b: set
    subjects: list | None


def _design(scans, values, levels, paired) -> _Design:
    """Which scans and subjects each level has; refuse a paired contrast without two
    subjects in both levels, and an unpaired one with a subject in both."""
    in_a, in_b = values == levels[0], values == levels[1]
    subjects_a = set(scans.loc[in_a, "subject"])
    subjects_b = set(scans.loc[in_b, "subject"])
    both = sorted(subjects_a & subjects_b)
    if paired and len(both) < 2:
        raise EvaluationError(f"a paired contrast needs subjects scanned in both {levels}; "
                              f"received {len(both)}")
    if not paired and both:
        raise EvaluationError(f"subject {both[0]} has scans in both {levels}; expected "
                              "paired=True for a within-subject factor")
    return _Design(scans, in_a, in_b, subjects_a, subjects_b, both if paired else None)


def _compare_levels(vals, design, n_permutations, seed):
    """``(a, b, t, p, effect_size, n)`` of per-scan values ``vals`` (n_scans, F): the
    per-subject means of each level and the permutation test of ``b - a``."""
    scans, in_a, in_b = design.scans, design.in_a, design.in_b
    if design.subjects is not None:  # paired: the same subjects in both levels
        a = _per_subject(vals[in_a], scans[in_a], design.subjects)
        b = _per_subject(vals[in_b], scans[in_b], design.subjects)
        t, p = sign_flip_test(b - a, n_permutations=n_permutations, seed=seed)
        diff = b - a
        sd = diff.std(axis=0, ddof=1)
        effect = np.divide(diff.mean(axis=0), sd, out=np.zeros_like(sd), where=sd > 0)
        return a, b, t, p, effect, len(design.subjects)
    sa, sb = sorted(design.subjects_a), sorted(design.subjects_b)
    a = _per_subject(vals[in_a], scans[in_a], sa)
    b = _per_subject(vals[in_b], scans[in_b], sb)
    t, p = permutation_test(a, b, n_permutations=n_permutations, seed=seed)
    pooled = np.sqrt((a.var(axis=0, ddof=1) + b.var(axis=0, ddof=1)) / 2)
    effect = np.divide(b.mean(axis=0) - a.mean(axis=0), pooled,
                       out=np.zeros_like(pooled), where=pooled > 0)
    return a, b, t, p, effect, len(sa) + len(sb)


def _contrast_rows(features, name, family, levels, a, b, t, p, effect, n, alpha):
    """One family's rows of the contrast table, with Benjamini-Hochberg q-values."""
    from statsmodels.stats.multitest import multipletests

    reject, q, _, _ = multipletests(p, alpha=alpha, method="fdr_bh")
    frame = features.copy()
    frame.insert(0, "family", family)
    frame.insert(0, "map", name)
    frame["n"] = n
    frame[f"mean_{levels[0]}"] = a.mean(axis=0)
    frame[f"mean_{levels[1]}"] = b.mean(axis=0)
    frame["diff"] = b.mean(axis=0) - a.mean(axis=0)
    frame["t"] = t
    frame["effect_size"] = effect
    frame["p"] = p
    frame["q"] = q
    frame["significant"] = reject
    return frame


def plot_network_contrast(result, path, *, map=None, title=None):
    """Network x network heatmap of the contrast's t values; FDR survivors marked ``*``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    table = result.table[result.table["family"] == "net_pair"]
    name = map or table["map"].iloc[0]
    table = table[table["map"] == name]
    nets = result.networks
    t = table.pivot(index="source", columns="target", values="t").loc[nets, nets].to_numpy()
    sig = table.pivot(index="source", columns="target", values="significant").loc[nets, nets]
    bound = max(float(np.nanmax(np.abs(t))), 1e-6)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(nets), 0.6 + 0.6 * len(nets)))
    image = ax.imshow(t, cmap="RdBu_r", vmin=-bound, vmax=bound)
    ticks = np.arange(len(nets))
    ax.set_xticks(ticks, nets, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(ticks, nets, fontsize=7)
    ax.set_xlabel("key network (attended)")
    ax.set_ylabel("query network")
    for i in range(len(nets)):
        for j in range(len(nets)):
            if bool(sig.iloc[i, j]):
                ax.text(j, i, "*", ha="center", va="center", fontsize=12)
    a, b = result.levels
    ax.set_title(title or f"{name}: t ({b} - {a}){', paired' if result.paired else ''}; "
                 "* FDR", fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.8, label="t")
    fig.tight_layout()
    try:
        return save_figure(fig, path, what="the attention heatmap", dpi=120)
    finally:
        plt.close(fig)
