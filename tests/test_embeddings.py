"""Embeddings: windows scaled with the checkpoint's scaler, pooled per scan and subject,
cached by checkpoint hash and data manifest, all views of multi-view models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_models import ToyMAE, make_model

from bsym.cli import main
from bsym.data.dataset import WindowDataset
from bsym.data.preprocess import RobustScaler
from bsym.evaluate.embeddings import (
    EmbeddingError,
    compute_embeddings,
    embed_checkpoint,
    feature_embeddings,
    load_embeddings,
)
from bsym.io import checksum_path, file_sha256
from bsym.models import Embeddings, ModelSpec, register
from bsym.testing import write_toy_store
from bsym.train.engine import TrainConfig, train

torch.set_num_threads(1)


class ToyViews(ToyMAE):
    """A toy model with three views, like BrainSymphony's fmri / sc / fusion."""

    def embed(self, batch):
        roi = self._encode(batch["bold"])
        sc = batch["sc"] @ torch.ones(batch["sc"].shape[-1], roi.shape[-1]) / roi.shape[-1]
        views = {"fmri": roi, "sc": sc, "fusion": 0.5 * (roi + sc)}
        return {k: Embeddings(subject=v.mean(dim=1), roi=v) for k, v in views.items()}


register(ModelSpec(name="toy-views", factory=ToyViews, description="test: three views",
                   presets={"tiny": {"n_rois": 8, "n_timepoints": 20, "width": 16}}))


def train_checkpoint(cohort, out_dir, *, name="toy-mae", seed=0, steps=2):
    """A quickly trained toy checkpoint with its fitted scaler."""
    from bsym.models import build

    dataset = WindowDataset(cohort, 20)
    scaler = dataset.fit_scaler(RobustScaler())
    torch.manual_seed(seed)
    model = build(name) if name != "toy-mae" else make_model(seed=seed)
    result = train(model, dataset, TrainConfig(steps=steps, batch_size=4, warmup_steps=0,
                                               progress=False, device="cpu", seed=seed),
                   out_dir, extra={"scaler": scaler.state_dict()})
    return result.final_path, model, scaler


@pytest.fixture
def store(tmp_path):
    return write_toy_store(tmp_path / "toy", n_subjects=6, sessions=2)


def test_scan_and_subject_pooling_match_a_direct_computation(store, tmp_path):
    ckpt, model, scaler = train_checkpoint(store, tmp_path / "run")
    emb = embed_checkpoint(ckpt, store, tmp_path / "emb.npz", progress=False)
    assert list(emb.views) == ["default"]
    assert emb.scans["n_windows"].tolist() == [3] * 12  # 60 points, 20-point windows
    scan = "sub-02_ses-2"
    windows = np.stack([scaler.transform(np.asarray(store.bold(scan))[:, s:s + 20].T).T
                        for s in (0, 20, 40)])
    model.eval()
    with torch.no_grad():
        direct = model.embed({"bold": torch.from_numpy(windows)})
    x_scan, table = emb.scan_features()
    row = table.index[table["scan"] == scan][0]
    np.testing.assert_allclose(x_scan[row], direct.subject.mean(0).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(emb.roi()[row], direct.roi.mean(0).numpy(), rtol=1e-4, atol=1e-5)
    x_subj, subjects = emb.subject_features()
    both = table.index[table["subject"] == "sub-02"]
    np.testing.assert_allclose(x_subj[subjects.index("sub-02")], x_scan[both].mean(0),
                               rtol=1e-5)
    roi_subj, _ = emb.subject_roi()
    assert roi_subj.shape == (6, 8, 16)


def test_cache_is_reused_and_a_changed_checkpoint_is_never_stale(store, tmp_path):
    ckpt, _, _ = train_checkpoint(store, tmp_path / "run")
    out = tmp_path / "emb.npz"
    first = embed_checkpoint(ckpt, store, out, progress=False)
    assert first.meta["cached"] is False
    second = embed_checkpoint(ckpt, store, out, progress=False)
    assert second.meta["cached"] is True
    np.testing.assert_array_equal(second.views["default"]["subject"],
                                  first.views["default"]["subject"])
    # the same path now holds other weights (a run redone: the file and its recorded
    # SHA-256): re-embedded, not reused
    other, _, _ = train_checkpoint(store, tmp_path / "run2", seed=1)
    ckpt.write_bytes(other.read_bytes())
    checksum_path(ckpt).write_bytes(checksum_path(other).read_bytes())
    third = embed_checkpoint(ckpt, store, out, progress=False)
    assert third.meta["cached"] is False
    assert third.meta["checkpoint_sha256"] != first.meta["checkpoint_sha256"]
    assert third.key() != first.key()
    assert not np.allclose(third.views["default"]["subject"], first.views["default"]["subject"])
    assert load_embeddings(out).meta["checkpoint_sha256"] == third.meta["checkpoint_sha256"]
    # another store: recomputed too
    moved = write_toy_store(tmp_path / "toy2", n_subjects=6, sessions=2, seed=9)
    fourth = embed_checkpoint(ckpt, moved, out, progress=False)
    assert fourth.meta["cached"] is False and fourth.manifest_hash == moved.manifest_hash


def test_every_view_of_a_multi_view_model_is_saved(store, tmp_path):
    ckpt, _, _ = train_checkpoint(store, tmp_path / "run", name="toy-views")
    emb = embed_checkpoint(ckpt, store, tmp_path / "views.npz", progress=False)
    back = load_embeddings(tmp_path / "views.npz", cohort=store)
    assert sorted(back.views) == ["fmri", "fusion", "sc"]
    assert back.view_name() == "fusion"
    assert len({back.key(v) for v in back.views}) == 3
    for view in back.views:
        assert back.roi(view).shape == (12, 8, 16)
        np.testing.assert_array_equal(back.views[view]["subject"], emb.views[view]["subject"])
    with pytest.raises(EmbeddingError, match="no view 'spatial'"):
        back.view_name("spatial")


def test_embeddings_of_another_dataset_are_refused(store, tmp_path):
    ckpt, _, _ = train_checkpoint(store, tmp_path / "run")
    embed_checkpoint(ckpt, store, tmp_path / "emb.npz", progress=False)
    other = write_toy_store(tmp_path / "other", n_subjects=6, sessions=2, seed=3)
    with pytest.raises(EmbeddingError, match="expected embeddings of this store"):
        load_embeddings(tmp_path / "emb.npz", cohort=other)
    with pytest.raises(EmbeddingError, match="no such embeddings file"):
        load_embeddings(tmp_path / "missing.npz")


def test_model_without_roi_embeddings(store):
    class SubjectOnly(ToyMAE):
        def embed(self, batch):
            return Embeddings(subject=self._encode(batch["bold"]).mean(dim=1))

    emb = compute_embeddings(SubjectOnly(), store, window=20, progress=False)
    assert emb.views["default"]["roi"] is None
    with pytest.raises(EmbeddingError, match="has no ROI embeddings"):
        emb.roi()


def test_auto_device_embeds_where_training_would(store):
    from bsym.train.devices import DeviceError

    torch.manual_seed(0)
    model = ToyMAE()
    on_cpu = compute_embeddings(model, store, window=20, progress=False, device="cpu")
    auto = compute_embeddings(model, store, window=20, progress=False, device="auto")
    if not torch.cuda.is_available():
        np.testing.assert_array_equal(auto.views["default"]["roi"],
                                      on_cpu.views["default"]["roi"])
    with pytest.raises(DeviceError, match="unknown device"):
        compute_embeddings(model, store, window=20, progress=False, device="gpu0")


def test_connectome_features_as_embeddings(store):
    fc = feature_embeddings(store, "fc")
    assert fc.views["fc"]["subject"].shape == (12, 28) and fc.roi().shape == (12, 8, 8)
    both = feature_embeddings(store, "fc+sc")
    assert both.views["fc+sc"]["subject"].shape == (12, 56)
    sc = feature_embeddings(store, "sc")
    x, table = sc.scan_features()
    first, second = table.index[table["subject"] == "sub-01"]
    np.testing.assert_array_equal(x[first], x[second])  # one SC per subject


def test_cli_embed(store, tmp_path, capsys):
    ckpt, _, _ = train_checkpoint(store, tmp_path / "run")
    argv = ["embed", "--checkpoint", str(ckpt), "--data", str(store.path), "--out",
            str(tmp_path / "e.npz"), "--quiet"]
    assert main(argv) == 0
    assert "embeddings of 12 scans" in capsys.readouterr().out
    assert main(argv) == 0
    assert "reused" in capsys.readouterr().out
    assert main(["embed", "--checkpoint", str(tmp_path / "nope.pt"), "--data",
                 str(store.path), "--out", str(tmp_path / "x.npz"), "--quiet"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def _flip(path, n=16):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + n] = bytes(b ^ 0xFF for b in data[middle:middle + n])
    path.write_bytes(bytes(data))


def test_a_changed_embeddings_file_is_caught_on_read_and_replaced_only_with_force(store,
                                                                                 tmp_path):
    ckpt, _, _ = train_checkpoint(store, tmp_path / "run")
    out = tmp_path / "emb.npz"
    first = embed_checkpoint(ckpt, store, out, progress=False)
    assert checksum_path(out).read_text() == f"{file_sha256(out)}  emb.npz\n"
    _flip(out)
    changed = out.read_bytes()
    with pytest.raises(EmbeddingError, match="emb.npz: checksum mismatch: the file changed "
                       "since bsym wrote it.*Fix: restore it.*--force"):
        load_embeddings(out)
    with pytest.raises(EmbeddingError, match="emb.npz: checksum mismatch.*Fix: pass --force"):
        embed_checkpoint(ckpt, store, out, progress=False)
    assert out.read_bytes() == changed  # refused: nothing replaced
    again = embed_checkpoint(ckpt, store, out, progress=False, force=True)
    assert again.meta["cached"] is False
    np.testing.assert_array_equal(load_embeddings(out).views["default"]["subject"],
                                  first.views["default"]["subject"])


def test_embeddings_without_their_record_are_refused_by_readers_and_recomputed(store,
                                                                              tmp_path):
    ckpt, _, _ = train_checkpoint(store, tmp_path / "run")
    out = tmp_path / "emb.npz"
    embed_checkpoint(ckpt, store, out, progress=False)
    checksum_path(out).unlink()  # as written by a bsym that kept no record
    with pytest.raises(EmbeddingError, match="emb.npz: no recorded SHA-256.*Fix: rerun `bsym "
                       "embed`"):
        load_embeddings(out)
    assert embed_checkpoint(ckpt, store, out, progress=False).meta["cached"] is False
    load_embeddings(out, cohort=store)


def test_embed_never_replaces_a_file_it_did_not_write(store, tmp_path):
    ckpt, _, _ = train_checkpoint(store, tmp_path / "run")
    mine = tmp_path / "mine.npz"
    np.savez(mine, x=np.arange(3))
    before = mine.read_bytes()
    for force in (False, True):
        with pytest.raises(EmbeddingError, match="mine.npz: this file exists and is not a file "
                           "of embeddings written by bsym.*Fix: choose another --out"):
            embed_checkpoint(ckpt, store, mine, progress=False, force=force)
    assert mine.read_bytes() == before and not checksum_path(mine).exists()
