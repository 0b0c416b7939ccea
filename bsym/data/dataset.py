"""PyTorch dataset of fixed-length windows over a cohort store."""

from __future__ import annotations

import copy
import json
from collections import OrderedDict

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from bsym.data.errors import CohortError
from bsym.data.preprocess import LazyScans, SignalCleaning, resample_tr, resampled_length

SC_TRANSFORMS = ("log1p", "none")


class _SeriesCache:
    """Preprocessed scans of this process, least recently used dropped first."""

    def __init__(self):
        self._items = OrderedDict()
        self._bytes = 0
        self._limit = 0.0

    def get(self, key):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def put(self, key, array, limit_mb):
        self._items[key] = array
        self._bytes += array.nbytes
        self._limit = max(self._limit, float(limit_mb) * 2**20)
        while self._bytes > self._limit and len(self._items) > 1:
            self._bytes -= self._items.popitem(last=False)[1].nbytes

    def clear(self):
        self._items.clear()
        self._bytes = 0


_SERIES = _SeriesCache()
#: Scalers fitted in this process, by what they were fitted on (a sweep refits the same
#: inner folds for every trial); the few most recent are kept.
_FITTED_SCALERS = OrderedDict()
_FITTED_KEPT = 32
SAMPLINGS = ("grid", "random")


class WindowDataset(Dataset):
    """Fixed windows of ``window`` time points with both modalities and labels.

    Each item is a dict: ``bold`` (ROIs x window, float32 tensor), ``sc`` (ROIs x
    ROIs, when the store has SC and ``with_sc``), ``labels`` (name -> value),
    ``scan``, ``subject`` and ``start`` (first time point, at the target TR).

    Parameters
    ----------
    cohort : Cohort
        An open cohort store.
    window : int
        Window length in time points (at ``target_tr``).
    scans : sequence of str, optional
        Scans to serve (default all). Pass the training scans for a training set.
    stride : int, optional
        Step between window starts (default ``window``: non-overlapping).
    max_windows : int, optional
        At most this many windows per scan (evenly spread; with ``sampling="random"``,
        this many draws per scan and epoch).
    sampling : {"grid", "random"}
        ``grid``: windows at fixed starts every ``stride`` points. ``random``: every item
        is a window at a start drawn uniformly over the whole scan, anew each epoch
        (see :meth:`set_epoch`), from ``seed``, the epoch and the item index, so an epoch
        is reproducible; a scan serves as many items per epoch as it has grid windows
        (at most ``max_windows``). Pretraining uses it: every part of a scan is reachable.
    cover_end : bool
        With ``grid``, add a last window that ends at the scan's last time point when the
        grid leaves a remainder, so the windows tile the whole scan (embeddings, tests).
    seed : int
        Seed of the random starts.
    labels : sequence of str
        Label columns to attach; every served scan must have them.
    target_tr : float, optional
        Resample every scan to this TR first. Without it all scans must share one TR.
    cleaning : SignalCleaning, optional
        nilearn signal cleaning applied per scan before windowing.
    scaler : RobustScaler, optional
        A scaler fitted on training scans (see :meth:`fit_scaler`).
    with_sc : bool
        Attach the subject's SC matrix.
    sc_transform : {"log1p", "none"}
        Transform of streamline counts.
    cache_mb : float
        Memory for preprocessed scans kept between reads (only used when cleaning or
        resampling; least recently used scans are dropped first). The cache is shared by
        every dataset of the process that reads the same store with the same cleaning and
        TR (the folds of a cross-validation read the same scans again), and holds up to the
        largest ``cache_mb`` asked for. It is used only by a dataset whose preprocessed
        scans all fit in it: shuffled reads of a larger set would mostly miss, so such a
        dataset keeps just the scan it read last, and its memory does not grow with the
        cohort.
    """

    def __init__(self, cohort, window, *, scans=None, stride=None, max_windows=None,
                 labels=(), target_tr=None, cleaning=None, scaler=None, with_sc=True,
                 sc_transform="log1p", cache_mb=512, sampling="grid", cover_end=False,
                 seed=0):
        self.cohort = cohort
        self.window = int(window)
        self.stride = int(stride) if stride else self.window
        self.max_windows = max_windows
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        self.sampling = sampling
        self.cover_end = bool(cover_end)
        self.seed = int(seed)
        self.epoch = 0
        self.labels = tuple(labels)
        self.target_tr = target_tr
        self.cleaning = cleaning or SignalCleaning()
        self.scaler = scaler
        self.with_sc = with_sc and "sc" in cohort.matrices
        self.sc_transform = sc_transform
        self.cache_mb = cache_mb
        if self.window < 1 or self.stride < 1:
            raise ValueError(f"window and stride must be >= 1, got {window} and {stride}")
        if sc_transform not in SC_TRANSFORMS:
            raise ValueError(f"sc_transform must be one of {SC_TRANSFORMS}, got {sc_transform!r}")
        table = cohort.subjects
        if scans is not None:
            scans = [str(s) for s in scans]
            unknown = sorted(set(scans) - set(table["scan"]))
            if unknown:
                raise CohortError(f"unknown scan(s): {', '.join(unknown[:5])}",
                                  file=cohort.path, fix="pass scan ids of this store")
            table = table.set_index("scan", drop=False).loc[scans].reset_index(drop=True)
        self.table = table
        cohort.require(labels=self.labels)
        if self.labels:
            missing = table.loc[table[list(self.labels)].isna().any(axis=1), "scan"].tolist()
            if missing:
                raise CohortError(f"labels {list(self.labels)} missing for {len(missing)} scan(s)",
                                  file=cohort.path / "subjects.parquet", subject=missing[0],
                                  fix="drop those scans from this task")
        self._check_tr()
        self.index = self._build_index()
        self._cached = self._series_bytes() <= float(cache_mb) * 2**20
        self._last = (None, None)  # (key, series) of the last scan read, when not cached

    # -- construction -------------------------------------------------------------
    def _check_tr(self):
        trs = sorted(self.table["tr"].unique())
        if self.target_tr is None and len(trs) > 1:
            first_off = self.table.loc[self.table["tr"] != trs[0]].iloc[0]
            raise CohortError(
                f"scans have different TRs ({', '.join(f'{t:g}' for t in trs)} s); a model "
                "must see one sampling rate",
                file=self.cohort.path / "subjects.parquet", subject=first_off["scan"],
                fix="set target_tr to resample every scan, or select scans of one TR",
            )
        self.tr = float(self.target_tr) if self.target_tr is not None else float(trs[0])

    def _length(self, row):
        if self.target_tr is None:
            return int(row["n_timepoints"])
        return resampled_length(int(row["n_timepoints"]), float(row["tr"]), self.tr)

    def _series_bytes(self):
        """Memory the preprocessed (float32) scans of this dataset take together."""
        points = sum(self._length(row) for row in self.table.to_dict("records"))
        return 4 * points * self.cohort.n_rois

    def _build_index(self):
        index = []
        for row in self.table.itertuples(index=False):
            row = row._asdict()
            n = self._length(row)
            if n < self.window:
                raise CohortError(
                    f"{n} time points (at TR {self.tr:g} s) is shorter than the "
                    f"{self.window}-point window",
                    file=self.cohort.path / row["bold_file"], subject=row["scan"],
                    fix="use a shorter window or exclude the short scans",
                )
            starts = np.arange(0, n - self.window + 1, self.stride)
            if self.cover_end and self.sampling == "grid" and starts[-1] + self.window < n:
                starts = np.append(starts, n - self.window)
            if self.max_windows is not None and len(starts) > self.max_windows:
                pick = np.linspace(0, len(starts) - 1, self.max_windows).round().astype(int)
                starts = starts[pick]
            if self.sampling == "random":  # the start is drawn per item and epoch
                index.extend((row["scan"], -(n - self.window + 1)) for _ in starts)
            else:
                index.extend((row["scan"], int(s)) for s in starts)
        return index

    def set_epoch(self, epoch):
        """Draw the random starts of epoch ``epoch`` (the training engine calls it)."""
        self.epoch = int(epoch)

    def _start(self, i):
        scan, start = self.index[i]
        if start >= 0:
            return scan, start
        rng = np.random.default_rng([self.seed, self.epoch, i])
        return scan, int(rng.integers(0, -start))

    # -- series access -----------------------------------------------------------
    @property
    def _preprocessed(self):
        return self.cleaning.active or self.target_tr is not None

    def series(self, scan):
        """One whole scan after cleaning and resampling, before scaling (ROIs x time)."""
        if not self._preprocessed:
            return self.cohort.bold(scan)
        key = (*self._preprocessing_key(), scan)
        found = self._kept(key)
        if found is not None:
            return found
        row = self.cohort.row(scan)
        bold = self.cleaning.apply(self.cohort.bold(scan), float(row["tr"]),
                                   self.cohort.confounds(scan))
        if self.target_tr is not None:
            bold = resample_tr(bold, float(row["tr"]), self.tr)
        bold.setflags(write=False)  # shared between datasets: never modified in place
        if self._cached:
            _SERIES.put(key, bold, self.cache_mb)
        else:
            self._last = (key, bold)
        return bold

    def _kept(self, key):
        """The preprocessed scan ``key`` if this process still holds it, else None."""
        if self._cached:
            return _SERIES.get(key)
        last_key, last = self._last
        return last if last_key == key else None

    def iter_series(self):
        """Yield every served scan's preprocessed series (for fitting a scaler)."""
        for scan in self.table["scan"]:
            yield np.asarray(self.series(scan))

    def fit_scaler(self, scaler):
        """Fit ``scaler`` on this dataset's scans, attach it, and return it.

        Call on the training dataset only, then pass the fitted scaler to the
        validation and test datasets. The scaler takes (time x ROIs) tables, so the
        scans (ROIs x time) are passed transposed, as a :class:`LazyScans` that reads
        (and preprocesses) one scan at a time: a :class:`RobustScaler` holds them all only
        while they fit its pooling limit. A scaler of the same kind and settings fitted on
        the same preprocessed scans earlier in this process is copied instead of fitted
        again (the same numbers).
        """
        scans = self.table["scan"].tolist()
        key = self._scaler_key(scaler, scans)
        if key in _FITTED_SCALERS:
            _FITTED_SCALERS.move_to_end(key)
            scaler.__dict__.update(copy.deepcopy(_FITTED_SCALERS[key].__dict__))
        else:
            scaler.fit(LazyScans(len(scans), lambda i: self.series(scans[i]).T))
            _FITTED_SCALERS[key] = copy.deepcopy(scaler)
            while len(_FITTED_SCALERS) > _FITTED_KEPT:
                _FITTED_SCALERS.popitem(last=False)
        self.scaler = scaler
        return self.scaler

    def _preprocessing_key(self):
        """What a preprocessed scan depends on besides its id: the store, TR and cleaning."""
        return (self.cohort.manifest_hash, str(self.cohort.path), self.tr,
                self.target_tr is not None, json.dumps(self.cleaning.to_dict(), sort_keys=True))

    def _scaler_key(self, scaler, scans):
        """What a fitted scaler depends on: its kind and settings, and the scans as
        :meth:`series` serves them."""
        settings = json.dumps(scaler.get_params(), sort_keys=True, default=str)
        return (type(scaler).__qualname__, settings, self._preprocessed,
                *self._preprocessing_key(), tuple(scans))

    # -- Dataset protocol ----------------------------------------------------------
    def __len__(self):
        return len(self.index)

    def _sc(self, subject):
        sc = np.asarray(self.cohort.sc(subject), dtype=np.float32)
        if self.sc_transform == "log1p":
            sc = np.log1p(sc)
        return torch.from_numpy(np.array(sc))

    def __getitem__(self, i):
        scan, start = self._start(i)
        bold = np.array(self.series(scan)[:, start:start + self.window], dtype=np.float32)
        if self.scaler is not None:
            bold = self.scaler.scale_windows(bold)
        row = self.cohort.row(scan)
        item = {"bold": torch.from_numpy(bold), "scan": scan, "subject": row["subject"],
                "start": start}
        if self.with_sc:
            item["sc"] = self._sc(row["subject"])
        if self.labels:
            item["labels"] = {name: _plain(row[name]) for name in self.labels}
        return item

    def describe(self) -> dict:
        """Parameters that define the windows (for provenance)."""
        return {"window": self.window, "stride": self.stride, "max_windows": self.max_windows,
                "sampling": self.sampling, "cover_end": self.cover_end, "seed": self.seed,
                "tr": self.tr, "cleaning": self.cleaning.to_dict(),
                "sc_transform": self.sc_transform, "n_scans": len(self.table),
                "n_windows": len(self)}


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if pd.isna(value):
        return None
    return value
