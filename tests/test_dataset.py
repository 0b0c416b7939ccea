import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bsym.data import CohortError
from bsym.data.dataset import WindowDataset
from bsym.data.preprocess import RobustScaler, SignalCleaning, resample_tr


def test_windows_cover_each_scan_with_both_modalities(toy_store):
    ds = WindowDataset(toy_store, window=20, labels=["age", "sex"])
    assert len(ds) == 6 * 3
    item = ds[4]
    assert item["bold"].shape == (8, 20) and item["bold"].dtype == torch.float32
    assert item["sc"].shape == (8, 8)
    scan, start = ds.index[4]
    np.testing.assert_array_equal(item["bold"].numpy(), toy_store.window(scan, start, 20))
    np.testing.assert_allclose(item["sc"].numpy(), np.log1p(toy_store.sc(item["subject"])))
    assert set(item["labels"]) == {"age", "sex"}


def test_stride_and_max_windows(toy_store):
    assert len(WindowDataset(toy_store, window=20, stride=10)) == 6 * 5
    ds = WindowDataset(toy_store, window=20, stride=1, max_windows=3)
    starts = [s for scan, s in ds.index if scan == toy_store.scans[0]]
    assert starts == [0, 20, 40]


def test_dataloader_batches(toy_store):
    ds = WindowDataset(toy_store, window=30, labels=["age", "sex"])
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["bold"].shape == (4, 8, 30)
    assert batch["sc"].shape == (4, 8, 8)
    assert batch["labels"]["age"].shape == (4,)
    assert len(batch["labels"]["sex"]) == 4


def test_scaler_is_fitted_on_training_scans_only(toy_store):
    scans = toy_store.scans
    train = WindowDataset(toy_store, window=20, scans=scans[:3])
    test = WindowDataset(toy_store, window=20, scans=scans[3:])
    scaler = train.fit_scaler(RobustScaler())
    assert scaler.n_scans_ == 3
    stacked = np.concatenate([toy_store.bold(s) for s in scans[:3]], axis=1)
    np.testing.assert_allclose(scaler.center_, np.median(stacked, axis=1), rtol=1e-5)
    iqr = np.percentile(stacked, 75, axis=1) - np.percentile(stacked, 25, axis=1)
    np.testing.assert_allclose(scaler.scale_, iqr, rtol=1e-5)
    test.scaler = scaler
    raw = toy_store.window(test.index[0][0], 0, 20)
    np.testing.assert_allclose(test[0]["bold"].numpy(),
                               (raw - scaler.center_[:, None]) / scaler.scale_[:, None], rtol=1e-5)
    np.testing.assert_array_equal(scaler.transform(raw.T).T, test[0]["bold"].numpy())
    restored = RobustScaler.from_state_dict(scaler.state_dict())
    np.testing.assert_array_equal(restored.transform(raw.T), scaler.transform(raw.T))
    np.testing.assert_array_equal(restored.scale_windows(raw), scaler.scale_windows(raw))


def test_a_scaler_fitted_on_the_same_scans_is_copied_not_refitted(toy_store_factory,
                                                                   monkeypatch):
    import bsym.data.dataset as dataset_module

    store = toy_store_factory(trs=(2.0, 0.8))
    dataset_module._FITTED_SCALERS.clear()
    fits = []
    real_fit = RobustScaler.fit
    monkeypatch.setattr(RobustScaler, "fit", lambda self, X: fits.append(1) or real_fit(self, X))
    first = WindowDataset(store, 10, target_tr=1.0, scans=store.scans[:3]).fit_scaler(
        RobustScaler())
    again = RobustScaler()
    fold = WindowDataset(store, 20, target_tr=1.0, scans=store.scans[:3])  # another window
    assert fold.fit_scaler(again) is again and fold.scaler is again
    assert len(fits) == 1
    np.testing.assert_array_equal(again.center_, first.center_)
    np.testing.assert_array_equal(again.scale_, first.scale_)
    assert again.n_scans_ == 3 and again.center_ is not first.center_
    WindowDataset(store, 10, target_tr=1.0, scans=store.scans[1:4]).fit_scaler(RobustScaler())
    WindowDataset(store, 10, target_tr=0.5, scans=store.scans[:3]).fit_scaler(RobustScaler())
    WindowDataset(store, 10, target_tr=1.0, scans=store.scans[:3]).fit_scaler(
        RobustScaler(quantile_range=(10.0, 90.0)))
    assert len(fits) == 4  # other scans, another TR, other settings: fitted


def test_scaler_reads_checkpoints_written_before_it_was_an_estimator():
    # extra["scaler"] as stored by earlier versions (the same keys)
    state = {"quantile_range": [25.0, 75.0], "center": [1.0, -2.0], "scale": [2.0, 0.5],
             "n_scans": 3}
    scaler = RobustScaler.from_state_dict(state)
    assert scaler.n_features_in_ == 2 and scaler.n_scans_ == 3
    window = np.array([[3.0, 1.0], [-2.0, -1.5]], dtype=np.float32)  # ROIs x time
    np.testing.assert_array_equal(scaler.scale_windows(window), [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(scaler.transform(window.T).T, [[1.0, 0.0], [0.0, 1.0]])
    assert RobustScaler.from_state_dict(scaler.state_dict()).state_dict() == state


def test_scaler_refuses_unfitted_use_and_flat_rois():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="not fitted"):
        RobustScaler().transform(np.zeros((5, 2)))
    with pytest.raises(NotFittedError, match="not fitted"):
        RobustScaler().scale_windows(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="zero inter-quantile range"):
        RobustScaler().fit([np.vstack([np.random.rand(10), np.ones(10)]).T])


def test_mixed_tr_needs_a_target_tr(toy_store_factory):
    cohort = toy_store_factory(trs=(0.72, 2.0), n_timepoints=200)
    with pytest.raises(CohortError, match="different TRs") as info:
        WindowDataset(cohort, window=20)
    assert "target_tr" in str(info.value)
    ds = WindowDataset(cohort, window=20, target_tr=2.0)
    assert ds.tr == 2.0
    fast = [scan for scan, tr in zip(cohort.scans, cohort.subjects["tr"]) if tr == 0.72][0]
    assert ds.series(fast).shape == (8, int(np.ceil(200 * 0.72 / 2.0)))


def test_resampling_keeps_slow_signals_and_removes_aliasing():
    tr, target = 0.5, 2.0
    t = np.arange(400) * tr
    slow = np.sin(2 * np.pi * 0.05 * t)
    fast = np.sin(2 * np.pi * 0.6 * t)  # above the 0.25 Hz Nyquist of TR 2 s
    out = resample_tr(np.vstack([slow, fast]), tr, target)
    t2 = np.arange(out.shape[1]) * target
    inner = slice(5, -5)
    np.testing.assert_allclose(out[0, inner], np.sin(2 * np.pi * 0.05 * t2)[inner], atol=0.05)
    assert np.abs(out[1, inner]).max() < 0.05


def test_series_shorter_than_the_window_is_refused(toy_store):
    with pytest.raises(CohortError, match="shorter than the 80-point window") as info:
        WindowDataset(toy_store, window=80)
    assert "sub-00" in str(info.value) and "bold/000000.npy" in str(info.value)


def test_missing_label_is_refused(toy_store):
    with pytest.raises(CohortError, match="no label column 'iq'"):
        WindowDataset(toy_store, window=20, labels=["iq"])


def test_cleaning_band_pass_and_confound_regression(toy_store_factory):
    cohort = toy_store_factory(confounds=True, n_timepoints=120)
    scan = cohort.scans[0]
    band = WindowDataset(cohort, window=20,
                         cleaning=SignalCleaning(detrend=True, high_pass=0.01, low_pass=0.1))
    series = band.series(scan)
    spectrum = np.abs(np.fft.rfft(series, axis=1)) ** 2
    freqs = np.fft.rfftfreq(series.shape[1], d=2.0)
    assert spectrum[:, freqs > 0.15].sum() < 0.05 * spectrum.sum()
    regress = WindowDataset(cohort, window=20, cleaning=SignalCleaning(confounds=True))
    residual = regress.series(scan)
    confounds = np.asarray(cohort.confounds(scan))
    assert np.abs(residual @ (confounds - confounds.mean(0))).max() < 1e-2
    with pytest.raises(ValueError, match="Nyquist"):
        WindowDataset(cohort, window=20, cleaning=SignalCleaning(low_pass=0.3))[0]


def test_unknown_scan_is_refused(toy_store):
    with pytest.raises(CohortError, match="unknown scan"):
        WindowDataset(toy_store, window=20, scans=["nope"])


def test_datasets_of_one_store_share_the_preprocessed_series(toy_store_factory, monkeypatch):
    import bsym.data.dataset as dataset_module

    store = toy_store_factory(trs=(2.0, 0.8))
    calls = []
    real = dataset_module.resample_tr

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset_module, "resample_tr", counting)
    dataset_module._SERIES.clear()
    first = WindowDataset(store, 10, target_tr=1.0)
    list(first.iter_series())
    assert len(calls) == len(store.scans)
    second = WindowDataset(store, 20, target_tr=1.0, scans=store.scans[:2])   # another fold
    np.testing.assert_array_equal(second.series(store.scans[0]), first.series(store.scans[0]))
    assert len(calls) == len(store.scans)                  # read back, not recomputed
    other = WindowDataset(store, 10, target_tr=0.5)       # another TR: its own series
    other.series(store.scans[0])
    assert len(calls) == len(store.scans) + 1
    with pytest.raises(ValueError):
        first.series(store.scans[0])[0, 0] = 1.0           # shared: read-only


def test_a_dataset_larger_than_the_cache_keeps_only_its_last_scan(toy_store_factory,
                                                                  monkeypatch):
    import bsym.data.dataset as dataset_module

    store = toy_store_factory(trs=(2.0, 0.8))
    calls = []
    real = dataset_module.resample_tr
    monkeypatch.setattr(dataset_module, "resample_tr",
                        lambda *args: calls.append(1) or real(*args))
    dataset_module._SERIES.clear()
    big = WindowDataset(store, 10, target_tr=1.0, cache_mb=1e-3)  # 6 scans do not fit
    scan = store.scans[0]
    first = big.series(scan)
    assert big.series(scan) is first and len(calls) == 1          # the last one is kept
    big.series(store.scans[1])
    big.series(scan)
    assert len(calls) == 3 and not dataset_module._SERIES._items  # nothing else is kept
    fits = WindowDataset(store, 10, target_tr=1.0)
    np.testing.assert_array_equal(fits.series(scan), first)


def test_percentiles_of_many_tables_equal_numpy_on_their_concatenation():
    from bsym.data.quantiles import column_percentiles, key_values, sortable_keys

    rng = np.random.default_rng(0)
    makers = [lambda shape: rng.normal(size=shape),
              lambda shape: rng.integers(-3, 4, size=shape).astype(float),  # many ties
              lambda shape: rng.standard_cauchy(size=shape) * 1e6,          # heavy tails
              lambda shape: rng.normal(size=shape) * 1e-30]                 # tiny values
    for trial in range(40):
        n_columns = int(rng.integers(1, 5))
        tables = [makers[trial % 4]((int(rng.integers(1, 300)), n_columns)).astype(np.float32)
                  for _ in range(int(rng.integers(1, 5)))]
        q = [float(rng.uniform(0, 50)), 50.0, float(rng.uniform(50, 100))]
        stacked = np.concatenate(tables)
        expected = np.percentile(stacked, q, axis=0)
        for pool_limit in (stacked.size, stacked.size - 1):  # pooled, then radix passes
            n, got = column_percentiles(tables.__iter__, q, n_columns, pool_limit=pool_limit)
            assert n == len(stacked)
            np.testing.assert_array_equal(got, expected)
    values = np.array([-np.inf, -3.5, -1e-40, 0.0, 1e-40, 2.0, np.inf], dtype=np.float32)
    keys = sortable_keys(values)
    assert (np.diff(keys.astype(np.int64)) > 0).all()
    np.testing.assert_array_equal(key_values(keys), values)


def test_scaler_reads_lazy_scans_one_at_a_time(monkeypatch):
    from bsym.data import quantiles
    from bsym.data.preprocess import LazyScans

    scans = [np.random.default_rng(s).normal(size=(50 + s, 3)).astype(np.float32)
             for s in range(4)]
    reads = []

    def read(i):
        reads.append(i)
        return scans[i]

    lazy = RobustScaler().fit(LazyScans(len(scans), read))
    listed = RobustScaler().fit(scans)
    np.testing.assert_array_equal(lazy.center_, listed.center_)
    np.testing.assert_array_equal(lazy.scale_, listed.scale_)
    assert lazy.n_scans_ == 4 and lazy.n_features_in_ == 3
    assert reads == [0] + [0, 1, 2, 3]  # the first to learn the shape, then pooled once
    reads.clear()
    monkeypatch.setattr(quantiles, "POOL_LIMIT", 2 * 3 * 51)  # past it: never pooled
    radix = RobustScaler().fit(LazyScans(len(scans), read))
    np.testing.assert_array_equal(radix.center_, listed.center_)
    np.testing.assert_array_equal(radix.scale_, listed.scale_)
    # the shape, a read stopped at the limit, then three radix passes
    assert reads == [0] + [0, 1, 2] + 3 * [0, 1, 2, 3]
