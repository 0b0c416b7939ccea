"""Fixed, hashed split files: written once per dataset, task and seed, then only read.

A split file is JSON: the request that made it, the data-manifest hash, the outer folds
(train / test subject lists), the inner folds of each outer train fold (for choosing
hyper-parameters), and the SHA-256 of all of that. Asking again for a file that exists
reads it and verifies its hash; a different request for the same file is an error, so a
split is never silently recomputed.

Folds are made over *groups* (subjects, or families), so every session and window of one
subject (or family) lands on one side. Protocols:

``kfold``
    Repeated stratified K-fold: stratified on the label for classification, on quantile
    bins of the label for regression (a label that varies within subjects, such as
    ``condition``, is balanced by the grouping itself and not stratified).
``site``
    Leave-one-site-out; the inner folds leave one of the training sites out (or are
    stratified K-fold when the training side has a single site).

The *pretraining cohort* (:func:`make_pretrain_split`) is a separate file per dataset and
seed: subjects that self-supervised pretraining may see and that are never probed. Task
splits made with ``pretrain=`` use only the other subjects and record its hash.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bsym.evaluate import EvaluationError
from bsym.io import json_sha256

FORMAT = "bsym-splits"
PRETRAIN_FORMAT = "bsym-pretrain-split"
FORMAT_VERSION = 1
PROTOCOLS = ("kfold", "site")
GROUP_BY = ("subject", "family")
TASK_TYPES = ("classification", "regression")
#: A numeric label with at most this many distinct integer values is a classification task.
MAX_INTEGER_CLASSES = 10


class SplitError(EvaluationError):
    """A split that cannot be made or used as asked."""


# -- helpers -------------------------------------------------------------------------------
def canonical_hash(payload) -> str:
    """SHA-256 of the canonical JSON of ``payload`` (sorted keys, no spaces)."""
    return json_sha256(payload)


def infer_task(values) -> str:
    """``"classification"`` or ``"regression"`` for a label column.

    Strings, booleans and integer-valued numbers with at most
    :data:`MAX_INTEGER_CLASSES` distinct values are classification; other numbers
    regression.
    """
    values = pd.Series(values).dropna()
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "classification"
    as_float = values.astype(float)
    if np.all(np.isclose(as_float, np.round(as_float))) and \
            as_float.nunique() <= MAX_INTEGER_CLASSES:
        return "classification"
    return "regression"


def _seed(*parts) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] % 2**31)


def subject_table(cohort, label=None, group_by="subject") -> pd.DataFrame:
    """One row per subject: ``subject``, ``group``, ``site`` and, with a label, ``label``
    (the subject's value, or None where it varies between the subject's scans).

    Raises
    ------
    SplitError
        ``group_by="family"`` on a store without a family column.
    """
    if group_by not in GROUP_BY:
        raise SplitError(f"group_by must be one of {GROUP_BY}, received {group_by!r}")
    table = cohort.subjects
    if label is not None:
        cohort.require(labels=[label])
    if group_by == "family" and "family" not in table.columns:
        raise SplitError(f"group_by='family' but the store {cohort.path} has no family column; "
                         "expected a family per subject (or use group_by='subject')")
    rows = []
    for subject, scans in table.groupby("subject", sort=True):
        row = {"subject": str(subject), "group": str(subject),
               "site": str(scans["site"].iloc[0]), "n_sites": scans["site"].nunique()}
        if group_by == "family":
            families = scans["family"].dropna().unique()
            if len(families) > 1:
                raise SplitError(f"subject {subject} has scans in {len(families)} families "
                                 f"({', '.join(map(str, families))}); expected one")
            row["group"] = f"family:{families[0]}" if len(families) else f"subject:{subject}"
        if label is not None:
            values = scans[label]
            row["label"] = values.iloc[0] if values.nunique() == 1 else None
        rows.append(row)
    return pd.DataFrame(rows)


# -- fold makers ---------------------------------------------------------------------------
def _strata(table, label, task, n_bins, n_splits):
    """Stratification labels per subject row (None: do not stratify)."""
    if label is None:
        return None
    if table["label"].isna().any():  # varies within subjects: the grouping balances it
        return None
    if task == "classification":
        return table["label"].astype(str).to_numpy()
    values = table["label"].astype(float)
    bins = max(1, min(int(n_bins), len(values) // int(n_splits)))  # >= n_splits per bin
    return pd.qcut(values.rank(method="first"), q=bins, labels=False).astype(str).to_numpy()


def _check_class_counts(table, strata, n_splits, label, what, inner_splits=None):
    groups_per_class = pd.Series(table["group"].to_numpy()).groupby(strata).nunique()
    need = int(n_splits)
    for cls, count in groups_per_class.items():
        if count < need:
            raise SplitError(
                f"label {label!r}, class {cls!r}: {count} subject group(s) {what}; "
                f"{n_splits}-fold stratified splits need at least {need} per class "
                f"(expected >= {need}, received {count}); use fewer folds or drop the class")
        if inner_splits:
            train_count = count - int(np.ceil(count / n_splits))
            if train_count < inner_splits:
                raise SplitError(
                    f"label {label!r}, class {cls!r}: {count} subject group(s) {what} leave "
                    f"about {train_count} per outer training fold, fewer than the "
                    f"{inner_splits} inner folds need (expected >= {inner_splits}, received "
                    f"{train_count}); use fewer inner or outer folds")


def _kfold(table, strata, n_splits, seed, *, what, label, classes=True):
    """``[(train_rows, test_rows), ...]`` over groups, stratified when ``strata`` is given."""
    groups = table["group"].to_numpy()
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise SplitError(f"{n_groups} subject group(s) {what}: too few for {n_splits} folds "
                         f"(expected >= {n_splits})")
    if strata is not None:
        from sklearn.model_selection import StratifiedGroupKFold

        if classes:
            _check_class_counts(table, strata, n_splits, label, what)
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [(tr, te) for tr, te in splitter.split(np.zeros(len(table)), strata, groups)]
    rng = np.random.default_rng(seed)
    unique = rng.permutation(np.unique(groups))
    chunks = np.array_split(unique, n_splits)
    out = []
    for chunk in chunks:
        test = np.isin(groups, chunk)
        out.append((np.flatnonzero(~test), np.flatnonzero(test)))
    return out


def _leave_one_site_out(table):
    sites = sorted(table["site"].unique())
    return [(np.flatnonzero(table["site"].to_numpy() != s),
             np.flatnonzero(table["site"].to_numpy() == s), s) for s in sites]


def _subjects(table, rows):
    return sorted(table["subject"].iloc[rows].tolist())


@dataclass(frozen=True)
class Fold:
    """One outer fold.

    Attributes
    ----------
    index : int
        Position in the split file (repeat * n_splits + fold for K-fold).
    repeat, fold : int
    train, test : tuple of str
        Subject ids.
    inner : tuple of (tuple, tuple)
        Inner (train, validation) subject lists within ``train``.
    test_site : str or None
        The held-out site (leave-one-site-out).
    """

    index: int
    repeat: int
    fold: int
    train: tuple
    test: tuple
    inner: tuple
    test_site: str | None = None

    @property
    def name(self) -> str:
        return f"r{self.repeat}f{self.fold}"


class _HashedFile:
    """The payload of a verified split or pretraining-cohort file, and where it lies."""

    def __init__(self, payload, path=None):
        self.payload = payload
        self.path = Path(path) if path is not None else None

    @property
    def sha256(self) -> str:
        return self.payload["sha256"]

    @property
    def manifest_hash(self) -> str:
        """The data-manifest hash of the store the file was made for."""
        return self.payload["manifest_hash"]


class Splits(_HashedFile):
    """A loaded, verified split file (see :func:`make_splits`)."""

    def __init__(self, payload, path=None):
        super().__init__(payload, path)
        self.folds = [Fold(index=i, repeat=f["repeat"], fold=f["fold"], train=tuple(f["train"]),
                           test=tuple(f["test"]),
                           inner=tuple((tuple(a), tuple(b)) for a, b in f["inner"]),
                           test_site=f.get("test_site"))
                      for i, f in enumerate(payload["folds"])]

    def __repr__(self):
        r = self.request
        return (f"Splits({r['protocol']}, label={r['label']!r}, {len(self)} folds, "
                f"seed={r['seed']}, sha256={self.sha256[:12]})")

    def __len__(self):
        return len(self.folds)

    def __iter__(self):
        return iter(self.folds)

    def __getitem__(self, index):
        return self.folds[index]

    @property
    def request(self) -> dict:
        return self.payload["request"]

    @property
    def seed(self) -> int:
        return int(self.request["seed"])

    @property
    def subjects(self) -> list:
        """Every subject the folds use."""
        return list(self.payload["subjects"])

    @property
    def task(self) -> str | None:
        return self.request.get("task")

    def check_cohort(self, cohort):
        """Raise :class:`SplitError` unless the split was made for this cohort store."""
        if cohort.manifest_hash != self.manifest_hash:
            made = self.payload.get("dataset")
            raise SplitError(
                f"{self.path or 'split'}: made for data with manifest "
                f"{self.manifest_hash[:12]}... (the store {made!r}), but the store "
                f"{cohort.path} has manifest "
                f"{cohort.manifest_hash[:12]}...; expected the store the split file was written "
                f"for. Fix: {_make_command(cohort.path, self.request.get('label'))}")
        return self

    def check_task(self, label, task=None, cohort=None):
        """Raise :class:`SplitError` unless the split was made for ``label`` (and the task
        type ``task``, when given).

        A split file made without a label (unstratified) serves any label.
        """
        made, made_task = self.request.get("label"), self.request.get("task")
        where = self.path or "split"
        store = cohort.path if cohort is not None else None
        if made is not None and str(made) != str(label):
            raise SplitError(
                f"{where}: this split file was made for the label {made!r} (stratified on "
                f"it), but the task is {label!r}; a split is never reused for another label. "
                f"Fix: {_make_command(store, label)}")
        if made is not None and task is not None and made_task is not None and task != made_task:
            raise SplitError(
                f"{where}: this split file was made for {made!r} as a {made_task} task, but "
                f"{task} was asked (--task-type); its folds are stratified for {made_task}. "
                f"Fix: drop --task-type {task}, or "
                f"{_make_command(store, label, f' --task-type {task}')}")
        return self


def _make_command(store, label, extra=""):
    """The fix for a split file made for something else: the command that makes the
    right one (``store``: the store's path, or None)."""
    store = store if store is not None else "STORE"
    task = f" --task {label}" if label is not None else ""
    return (f"make the split file of this task with `bsym splits --data {store}{task}{extra} "
            "--splits NEW.json` and pass it as --splits (or pass a --splits path that does not "
            "exist yet: it is made on first use)")


_WHAT = {FORMAT: ("a split file", "--splits", "bsym splits --data STORE --task LABEL "
                   "--splits FILE"),
         PRETRAIN_FORMAT: ("a pretraining-cohort file", "--pretrain-split",
                           "bsym splits --data STORE --pretrain-fraction F --splits FILE")}
_REMAKE = ("if bsym wrote it, move it away and rerun: the same request makes the same "
           "split again")


def _check_payload(payload, path, fmt):
    what, flag, command = _WHAT[fmt]
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        other = _WHAT.get(got)
        hint = f" (that is {other[0]}, for {other[1]})" if other else ""
        made_there = " (it is made there)" if fmt == FORMAT else ""
        raise SplitError(f"{path}: expected {what} (format {fmt!r}), received format "
                         f"{got!r}{hint}; bsym never replaces it. Fix: pass {what} made by "
                         f"`{command}` as {flag}, or a path that does not exist "
                         f"yet{made_there}")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise SplitError(f"{path}: format version {payload['format_version']} is newer than "
                         f"this bsym reads ({FORMAT_VERSION}). Fix: upgrade bsym")
    body = {k: v for k, v in payload.items() if k != "sha256"}
    digest = canonical_hash(body)
    if payload.get("sha256") != digest:
        raise SplitError(f"{path}: content does not match its SHA-256 (stored "
                         f"{str(payload.get('sha256'))[:12]}..., computed {digest[:12]}...): the "
                         f"file was modified after writing. Fix: {_REMAKE}")
    return payload


def _read(path, fmt):
    path = Path(path)
    what, flag, command = _WHAT[fmt]
    if not path.is_file():
        raise SplitError(f"{path}: no such {what[2:]} ({'a folder' if path.is_dir() else 'absent'})"
                         f". Fix: make it with `{command}` and pass it as {flag}")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise SplitError(f"{path}: not {what}: not valid JSON ({err}); bsym never replaces "
                         f"it. Fix: pass {what} made by `{command}` as {flag} ({_REMAKE}), or "
                         "a path that does not exist yet") from None
    return _check_payload(payload, path, fmt)


def _compare(existing, payload, path, store=None):
    made, asked = existing["request"], payload["request"]
    if "label" in made and made.get("label") != asked.get("label"):
        raise SplitError(
            f"{path}: this split file was made for the label {made.get('label')!r}, but "
            f"{asked.get('label')!r} was asked; split files are never recomputed. Fix: "
            f"{_make_command(store, asked.get('label'))}")
    diffs = []
    for key in sorted(set(made) | set(asked)):
        a, b = made.get(key), asked.get(key)
        if a != b:
            diffs.append(f"{key}: file {a!r}, requested {b!r}")
    if existing["manifest_hash"] != payload["manifest_hash"]:
        diffs.append(f"manifest_hash: file {existing['manifest_hash'][:12]}..., requested "
                     f"{payload['manifest_hash'][:12]}... (another store)")
    if diffs:
        raise SplitError(f"{path} exists and was made for another request ({'; '.join(diffs)}); "
                         "split files are never recomputed. Fix: drop the split options to use "
                         "this file as it was made, or pass another --splits path for this "
                         "request (it is made there)")


def _write_once(path, payload, fmt):
    """Write ``payload`` to ``path`` unless it exists; return what the file holds."""
    from bsym.io import atomic_write_json, check_writable

    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        what, flag, _ = _WHAT[fmt]
        check_writable(path, fix=f"choose a {flag} path in a folder you can write to")
        try:
            atomic_write_json(path, payload, what=what, exclusive=True)
            return payload
        except FileExistsError:  # another process wrote the file meanwhile
            pass
    existing = _read(path, fmt)
    _compare(existing, payload, path)
    return existing


# -- pretraining cohort --------------------------------------------------------------------
class PretrainSplit(_HashedFile):
    """Subjects for self-supervised pretraining and the disjoint subjects to probe."""

    def __repr__(self):
        return (f"PretrainSplit({len(self.pretrain)} pretraining, {len(self.probe)} probed "
                f"subjects, sha256={self.sha256[:12]})")

    @property
    def pretrain(self) -> list:
        return list(self.payload["pretrain"])

    @property
    def probe(self) -> list:
        return list(self.payload["probe"])

    def validation(self, n, seed=0) -> list:
        """``n`` subjects drawn (seeded) from those never pretrained on: a held-out set for
        a pretraining run's validation loss (it reads no label and decides nothing)."""
        pool = sorted(self.probe)
        n = min(int(n), len(pool))
        rng = np.random.default_rng([int(seed), 31337])
        return sorted(rng.choice(pool, size=n, replace=False).tolist()) if n else []

    def write_subject_list(self, path, which="pretrain", subjects=None) -> Path:
        """Write one subject id a line (for ``bsym pretrain --subjects-file``); ``which``
        names the list, ``subjects`` gives it when it is not ``pretrain`` or ``probe``."""
        if subjects is None:
            if which not in ("pretrain", "probe"):
                raise ValueError(f"which must be 'pretrain' or 'probe', received {which!r}")
            subjects = getattr(self, which)
        from bsym.io import atomic_write_text, guard_output

        path = Path(path)
        guard_output(path, is_ours=subject_list_is_ours, what="subject list", overwrite=True,
                     fix_other="choose another path for the subject list, or move this file "
                     "away yourself")
        atomic_write_text(path, f"# {which} subjects of {self.path or 'pretrain split'} "
                          f"(sha256 {self.sha256})\n" + "\n".join(subjects) + "\n",
                          what=f"the {which} subject list")
        return path


_LIST_HEADER = re.compile(r"# \w+ subjects of .* \(sha256 [0-9a-f]{64}\)")


def subject_list_is_ours(path) -> bool:
    """Whether ``path`` is a subject list :meth:`PretrainSplit.write_subject_list` wrote
    (its first line names the split file and its hash)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return bool(_LIST_HEADER.fullmatch(handle.readline().rstrip("\n")))
    except (OSError, UnicodeDecodeError):
        return False


def make_pretrain_split(cohort, path, *, fraction=0.3, seed=0, group_by="subject",
                        stratify=None) -> PretrainSplit:
    """Choose the pretraining cohort once and write it to ``path`` (or read it back).

    Parameters
    ----------
    cohort : Cohort
    path : str or Path
        JSON file; if it exists it is read, verified and compared with this request.
    fraction : float
        Share of subject groups used for pretraining only (0 < fraction < 1).
    seed : int
    group_by : {"subject", "family"}
        Families stay on one side.
    stratify : str, optional
        A label to balance between the two sides.
    """
    if not 0 < float(fraction) < 1:
        raise SplitError(f"fraction must be in (0, 1), received {fraction}")
    table = subject_table(cohort, stratify, group_by)
    groups = table.drop_duplicates("group")
    n_pre = int(round(float(fraction) * len(groups)))
    if n_pre < 1 or n_pre >= len(groups):
        raise SplitError(f"fraction {fraction} of {len(groups)} subject groups leaves an empty "
                         "side; expected at least one group on each side")
    if stratify is not None:
        from sklearn.model_selection import train_test_split

        strata = _strata(groups, stratify, infer_task(groups["label"]), 5, 2)
        pre_groups, _ = train_test_split(groups["group"].to_numpy(), train_size=n_pre,
                                         random_state=_seed(seed, 7), stratify=strata)
    else:
        rng = np.random.default_rng(_seed(seed, 7))
        pre_groups = rng.permutation(groups["group"].to_numpy())[:n_pre]
    chosen = table["group"].isin(set(pre_groups))
    body = {"format": PRETRAIN_FORMAT, "format_version": FORMAT_VERSION,
            "dataset": cohort.path.name, "manifest_hash": cohort.manifest_hash,
            "request": {"fraction": float(fraction), "seed": int(seed), "group_by": group_by,
                        "stratify": stratify},
            "pretrain": sorted(table.loc[chosen, "subject"]),
            "probe": sorted(table.loc[~chosen, "subject"])}
    body["sha256"] = canonical_hash(body)
    return PretrainSplit(_write_once(path, body, PRETRAIN_FORMAT), path)


def load_pretrain_split(path) -> PretrainSplit:
    """Read and verify a pretraining split file."""
    return PretrainSplit(_read(path, PRETRAIN_FORMAT), path)


# -- task splits ---------------------------------------------------------------------------
def make_splits(cohort, path, *, label=None, task=None, protocol="kfold", n_splits=5,
                n_repeats=1, inner_splits=3, group_by="subject", seed=0, n_bins=5,
                pretrain=None) -> Splits:
    """Make the split file of a task once (or read and verify the one at ``path``).

    Parameters
    ----------
    cohort : Cohort
    path : str or Path
        JSON split file. If it exists it is read, its hash verified and its request
        compared with this one (a difference is an error).
    label : str, optional
        Label to stratify on (the task's label). None: unstratified folds.
    task : {"classification", "regression"}, optional
        Default: inferred from the label (:func:`infer_task`).
    protocol : {"kfold", "site"}
        Repeated stratified K-fold, or leave-one-site-out.
    n_splits, n_repeats : int
        Outer folds and repetitions (K-fold only).
    inner_splits : int
        Inner folds within each outer training fold.
    group_by : {"subject", "family"}
        What stays on one side of every split.
    seed : int
    n_bins : int
        Quantile bins for stratifying a regression target.
    pretrain : PretrainSplit or path, optional
        Use only its probed subjects.

    Returns
    -------
    Splits

    Raises
    ------
    SplitError
        A missing label, too few subjects per class for the folds, a site protocol on a
        one-site cohort, or an existing file made for another request.
    """
    _check_request(protocol, n_splits, n_repeats, inner_splits)
    table = subject_table(cohort, label, group_by)
    if label is not None:
        task = _task_type(cohort, label, task)
    table, pretrain_hash = _probed_only(table, pretrain, cohort)
    if protocol == "site":
        _check_one_site_each(table, cohort)
    strata = _strata(table, label, task, n_bins, n_splits)
    if protocol == "kfold" and strata is not None and task == "classification":
        _check_class_counts(table, strata, n_splits, label, "in the cohort", inner_splits)

    request = {"label": label, "task": task if label is not None else None,
               "protocol": protocol, "n_splits": int(n_splits) if protocol == "kfold" else None,
               "n_repeats": int(n_repeats), "inner_splits": int(inner_splits),
               "group_by": group_by, "seed": int(seed), "n_bins": int(n_bins),
               "pretrain_sha256": pretrain_hash}
    path = Path(path)
    if path.exists():  # read, verify, compare: never recompute
        existing = load_splits(path)
        _compare(existing.payload, {"request": request, "manifest_hash": cohort.manifest_hash},
                 path, store=cohort.path)
        return existing
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, "dataset": cohort.path.name,
            "manifest_hash": cohort.manifest_hash, "request": request,
            "subjects": sorted(table["subject"]), "folds": _folds(table, strata, request)}
    body["sha256"] = canonical_hash(body)
    return Splits(_write_once(path, body, FORMAT), path)


def _check_request(protocol, n_splits, n_repeats, inner_splits):
    if protocol not in PROTOCOLS:
        raise SplitError(f"protocol must be one of {PROTOCOLS}, received {protocol!r}")
    for name, value, minimum in (("n_splits", n_splits, 2), ("n_repeats", n_repeats, 1),
                                 ("inner_splits", inner_splits, 2)):
        if int(value) < minimum:
            raise SplitError(f"{name} must be >= {minimum}, received {value}")
    if protocol == "site" and int(n_repeats) != 1:
        raise SplitError(f"leave-one-site-out is deterministic: n_repeats must be 1, received "
                         f"{n_repeats}")


def _task_type(cohort, label, task):
    """``task``, or the task type inferred from the label's values."""
    task = task or infer_task(cohort.subjects[label])
    if task not in TASK_TYPES:
        raise SplitError(f"task must be one of {TASK_TYPES}, received {task!r}")
    return task


def _probed_only(table, pretrain, cohort):
    """``(rows, pretrain_hash)``: the rows of the subjects ``pretrain`` (a
    :class:`PretrainSplit`, a path or None) leaves for probing, and its hash."""
    if pretrain is None:
        return table, None
    if not isinstance(pretrain, PretrainSplit):
        pretrain = load_pretrain_split(pretrain)
    if pretrain.manifest_hash != cohort.manifest_hash:
        raise SplitError(f"{pretrain.path}: this pretraining split was made for another "
                         f"store ({pretrain.payload.get('dataset')!r}, manifest "
                         f"{pretrain.manifest_hash[:12]}...; expected {cohort.path}, manifest "
                         f"{cohort.manifest_hash[:12]}...). Fix: make the pretraining split of "
                         f"this store with `bsym splits --data {cohort.path} "
                         "--pretrain-fraction F --splits FILE` and pass it as "
                         "--pretrain-split")
    probed = table[table["subject"].isin(set(pretrain.probe))].reset_index(drop=True)
    return probed, pretrain.sha256


def _check_one_site_each(table, cohort):
    """Leave-one-site-out needs two sites or more, and each subject (group) at one site."""
    spread = table.loc[table["n_sites"] > 1, "subject"].tolist()
    if spread:
        raise SplitError(f"subject {spread[0]} has scans at several sites; leave-one-site-out "
                         "expected every subject at one site")
    n_sites = table["site"].nunique()
    if n_sites < 2:
        raise SplitError(f"leave-one-site-out needs at least 2 sites; the store {cohort.path} "
                         f"has {n_sites} ({', '.join(sorted(table['site'].unique()))}); "
                         "use protocol='kfold'")
    per_group = table.groupby("group")["site"].nunique()
    if (per_group > 1).any():
        raise SplitError(f"{per_group.idxmax()} spans several sites; leave-one-site-out "
                         "with group_by='family' expects each family at one site")


def _folds(table, strata, request):
    """The outer folds of ``request`` over ``table``, each with the inner folds of its
    training side, as written in the split file."""
    folds = []
    for r, k, train_rows, test_rows, site in _outer_folds(table, strata, request):
        train_table = table.iloc[train_rows].reset_index(drop=True)
        inner_parts = _inner_folds(train_table, request, r, k)
        folds.append({
            "repeat": r, "fold": k, "test_site": site,
            "train": _subjects(table, train_rows), "test": _subjects(table, test_rows),
            "inner": [[_subjects(train_table, a), _subjects(train_table, b)]
                      for a, b in inner_parts],
        })
    return folds


def _outer_folds(table, strata, request):
    """``[(repeat, fold, train_rows, test_rows, test_site), ...]``."""
    if request["protocol"] == "site":
        return [(0, k, tr, te, site) for k, (tr, te, site) in
                enumerate(_leave_one_site_out(table))]
    outer = []
    for r in range(request["n_repeats"]):
        parts = _kfold(table, strata, request["n_splits"], _seed(request["seed"], r),
                       what="in the cohort", label=request["label"],
                       classes=request["task"] == "classification")
        outer.extend((r, k, tr, te, None) for k, (tr, te) in enumerate(parts))
    return outer


def _inner_folds(train_table, request, r, k):
    """``[(train_rows, validation_rows), ...]`` within the training side of fold ``rRfK``:
    leave-one-site-out across its sites (site protocol), else K-fold."""
    if request["protocol"] == "site" and train_table["site"].nunique() >= 2:
        return [(tr, te) for tr, te, _ in _leave_one_site_out(train_table)]
    label, task, n_inner = request["label"], request["task"], request["inner_splits"]
    strata = _strata(train_table, label, task, request["n_bins"], n_inner)
    return _kfold(train_table, strata, n_inner, _seed(request["seed"], r, k, 1),
                  what=f"in the training side of fold r{r}f{k}", label=label,
                  classes=task == "classification")


def load_splits(path) -> Splits:
    """Read a split file and verify its hash and that train and test never overlap."""
    splits = Splits(_read(path, FORMAT), path)
    for fold in splits:
        shared = set(fold.train) & set(fold.test)
        if shared:
            raise SplitError(f"{path}: fold {fold.name} has subjects on both sides "
                             f"({', '.join(sorted(shared)[:3])})")
    return splits


def check_not_pretrained_on(pretrained, trained_on, cohort, subjects, where):
    """Refuse to evaluate subjects a self-supervised encoder was pretrained on.

    Parameters
    ----------
    pretrained : sequence of str or None
        Subjects of the pretraining run (recorded in the checkpoint); None skips the check.
    trained_on : str or None
        Manifest hash of the store it was pretrained on: subject ids are compared only
        within that same store.
    cohort : Cohort
    subjects : sequence of str
        Subjects to be evaluated.
    where : str
        What is being evaluated, for the message.
    """
    if pretrained is None or trained_on != cohort.manifest_hash:
        return
    overlap = sorted(set(map(str, pretrained)) & set(map(str, subjects)))
    if overlap:
        raise EvaluationError(
            f"{where}: {len(overlap)} of the {len(set(subjects))} evaluated subjects were in the "
            f"encoder's pretraining cohort ({', '.join(overlap[:3])}{', ...' if len(overlap) > 3 else ''}); "
            "expected held-out subjects. Make the split with the pretraining-cohort file "
            "(`bsym splits --pretrain-split`), or pass allow_pretrained_subjects / "
            "--allow-pretrained-subjects to evaluate them knowingly")
