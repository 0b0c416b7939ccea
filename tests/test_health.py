"""Training health: held-out pretext task against trivial baselines, embedding rank and
dead dimensions, the verdict per view, loss curves and the ``bsym health`` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bsym.cli import main
from bsym.data import CohortWriter, open_cohort
from bsym.data.dataset import WindowDataset
from bsym.data.preprocess import RobustScaler
from bsym.evaluate.embeddings import embed_checkpoint
from bsym.evaluate.health import (
    HEALTH_COLUMNS,
    HealthError,
    check_tracked_run,
    collapse_threshold,
    collect_pretext,
    dimension_spread,
    effective_rank,
    embedding_health,
    log_health,
    plot_loss_curves,
    pretraining_run_id,
    training_health,
    verdict,
)
from bsym.models import BrainModel, Embeddings, ModelSpec, build, masking, register
from bsym.models.pretext import interpolate_time, masked_series_prediction, row_mean
from bsym.testing import write_toy_store
from bsym.train.engine import TrainConfig, train

torch.set_num_threads(1)
PNG = b"\x89PNG"


# -- a model whose pretext task is learnable: hidden ROIs are copies of visible ones -------
class ToyCopy(BrainModel):
    """Hidden ROIs rebuilt as a linear mix of the visible ROIs (zero-initialised)."""

    def __init__(self, n_rois=8, n_timepoints=20, mask_rois=2):
        super().__init__()
        self.mask_rois = mask_rois
        self.mix = nn.Linear(n_rois, n_rois, bias=False)
        self.proj = nn.Linear(n_timepoints, 4)
        nn.init.zeros_(self.mix.weight)

    def _hidden_rows(self, x, generator):
        order = torch.rand(x.shape[:2], generator=generator).argsort(dim=1)
        rows = torch.zeros(x.shape[:2], dtype=torch.bool)
        return rows.scatter_(1, order[:, :self.mask_rois], True)

    def _rebuild(self, x, rows):
        return self.mix(x.masked_fill(rows[..., None], 0.0).transpose(1, 2)).transpose(1, 2)

    def pretrain_loss(self, batch, *, generator=None, stage=None):
        x = batch["bold"]
        rows = self._hidden_rows(x, generator)
        return F.mse_loss(self._rebuild(x, rows)[rows], x[rows])

    def pretext_predictions(self, batch, *, generator=None, stage=None):
        x = batch["bold"]
        rows = self._hidden_rows(x, generator)
        hidden = rows[..., None].expand_as(x)
        return {"default": (masked_series_prediction("masked_rois", x, hidden,
                                                     self._rebuild(x, rows)),)}

    def embed(self, batch):
        return Embeddings(subject=self.proj(batch["bold"]).mean(dim=1))


register(ModelSpec(name="toy-copy", factory=ToyCopy, description="test: copy hidden ROIs",
                   presets={"tiny": {"n_rois": 8, "n_timepoints": 20}}))
PRETRAIN = [f"sub-{s:02d}" for s in range(4)]
HELD_OUT = [f"sub-{s:02d}" for s in range(4, 8)]


def write_paired_store(path, n_subjects=8, n_timepoints=60, seed=0):
    """ROIs 2k and 2k+1 carry the same series (a hidden ROI's copy is usually visible)."""
    rng = np.random.default_rng(seed)
    with CohortWriter(path, source={"name": "paired", "seed": seed}, atlas="toy") as writer:
        writer.set_rois([f"roi{i}" for i in range(8)])
        for s in range(n_subjects):
            bold = np.repeat(rng.standard_normal((4, n_timepoints)), 2, axis=0)
            writer.add_scan(subject=f"sub-{s:02d}", tr=2.0, bold=bold.astype(np.float32),
                            age=20.0 + s)
    return open_cohort(path)


def pretrain_toy(cohort, out_dir, *, steps, lr):
    dataset = WindowDataset(cohort, 20, scans=[f"{s}_ses-1" for s in PRETRAIN])
    scaler = dataset.fit_scaler(RobustScaler())
    torch.manual_seed(0)
    config = TrainConfig(steps=steps, batch_size=8, lr=lr, warmup_steps=0, progress=False,
                         device="cpu", seed=0)
    extra = {"scaler": scaler.state_dict(), "train_subjects": PRETRAIN}
    return train(build("toy-copy"), dataset, config, out_dir, extra=extra).final_path


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("health")
    cohort = write_paired_store(root / "store")
    return {"cohort": cohort, "root": root,
            "trained": pretrain_toy(cohort, root / "trained", steps=150, lr=0.05),
            "untrained": pretrain_toy(cohort, root / "untrained", steps=1, lr=1e-12)}


# -- embedding health ----------------------------------------------------------------------
def test_effective_rank_of_known_matrices():
    assert effective_rank(np.eye(8)) == pytest.approx(8.0, rel=1e-4)
    rng = np.random.default_rng(0)
    rank_one = np.outer(rng.normal(size=20), rng.normal(size=6))
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(np.eye(8), center=True) == pytest.approx(7.0, rel=1e-4)
    two = np.hstack([rng.normal(size=(50, 2)), np.zeros((50, 6))])
    assert 1.5 < effective_rank(two, center=True) <= 2.0


def test_dead_dimensions_and_collapse_are_detected():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6))
    x[:, 1] = 3.0                                     # constant
    x[:, 4] *= 1e-6                                   # negligible next to the others
    spread = dimension_spread(x)
    assert spread["dead_dims"] == 2 and spread["dead_fraction"] == pytest.approx(2 / 6)
    assert spread["sd_min"] == 0.0 and spread["sd_max"] > 0.5
    assert not embedding_health(x)["collapsed"]
    constant = embedding_health(np.ones((30, 6)))
    assert constant["collapsed"] and constant["dead_dims"] == 6
    one_direction = embedding_health(np.outer(rng.normal(size=30), rng.normal(size=16)))
    assert one_direction["collapsed"] and one_direction["effective_rank"] < 1.1
    assert embedding_health(np.full((5, 3), np.nan))["collapsed"]
    assert collapse_threshold(100, 32) == 2.0 and collapse_threshold(3, 32) == 1.0
    with pytest.raises(HealthError, match="at least 2 subjects"):
        embedding_health(np.ones((1, 4)))
    with pytest.raises(HealthError, match="2-D"):
        effective_rank(np.ones(4))


def test_verdict_is_strict_and_names_the_failure():
    health = {"effective_rank": 5.0, "n_dims": 32, "dead_dims": 0, "collapsed": False}
    score = {"task": "t", "pretext_score": 0.30, "trivial_score": 0.10,
             "trivial_baseline": "roi_mean"}
    assert verdict([score], health) == (True, "t: beat per-ROI mean: R^2 0.3 vs 0.1; "
                                              "effective rank 5 of 32")
    tie = {**score, "trivial_score": 0.30}
    learned, reason = verdict([tie], health)
    assert not learned and "did not beat per-ROI mean: R^2 0.3 vs 0.3" in reason
    learned, reason = verdict([score], {**health, "effective_rank": 1.1, "collapsed": True})
    assert not learned and reason == "collapsed: effective rank 1.1 of 32"
    assert not verdict([score, {**score, "pretext_score": float("nan")}], health)[0]


# -- the baselines -------------------------------------------------------------------------
def test_baselines_read_visible_entries_only():
    x = torch.tensor([[[1.0, 9.0, 3.0, 9.0, 5.0], [9.0, 9.0, 9.0, 9.0, 9.0]]])
    visible = torch.tensor([[[True, False, True, False, True], [False] * 5]])
    np.testing.assert_allclose(interpolate_time(x, visible)[0, 0], [1, 2, 3, 4, 5])
    np.testing.assert_allclose(row_mean(x, visible)[0, 1], [3.0] * 5)  # the window's mean
    y = torch.where(visible, x, torch.full_like(x, -100.0))
    assert torch.equal(interpolate_time(x, visible), interpolate_time(y, visible))


def _tiny(name, **overrides):
    torch.manual_seed(0)
    sizes = {"brainsymphony": dict(n_rois=8, n_timepoints=16),
             "brainlm": dict(n_rois=8, n_timepoints=40), "brainjepa": dict(n_rois=8, n_timepoints=48),
             "brainmass": dict(n_rois=8, n_timepoints=40)}[name]
    return build(name, "tiny", **sizes, **overrides).eval()


def _batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(3, 8, 8, generator=g)
    return {"bold": torch.randn(3, 8, model.n_timepoints, generator=g),
            "sc": torch.log1p(10 * (a + a.transpose(1, 2))) * (1 - torch.eye(8))}


def _run(model, batch, seed=7):
    return model.pretext_predictions(batch, generator=torch.Generator().manual_seed(seed))


def _hidden_changed(name, model, batch, seed=7):
    """``batch`` with every entry the model does not see (under seed's masks) moved."""
    g = torch.Generator().manual_seed(seed)
    x, out = batch["bold"], dict(batch)
    if name == "brainsymphony":
        union = masking.fmri_masks(3, 8, model.n_timepoints, model.mask_ratio, g)["union"]
        edges = model._edge_mask(batch["sc"], g)
        out["bold"], out["sc"] = x + 5.0 * union, batch["sc"] + 2.0 * edges
    elif name == "brainlm":
        mask = model.draw_mask(3, g)[..., None].expand(-1, -1, model.patch_size)
        out["bold"] = x + 5.0 * mask.reshape(x.shape)
    elif name == "brainjepa":
        context = model.draw_masks(3, g)["context"]
        seen = torch.zeros(3, model.n_tokens, dtype=torch.bool).scatter_(1, context, True)
        out["bold"] = x + 5.0 * (~seen)[..., None].expand(-1, -1, model.patch_size).reshape(
            x.shape)
    return out


@pytest.mark.parametrize("name", ["brainsymphony", "brainlm", "brainjepa"])
def test_pretext_baselines_do_not_move_when_hidden_entries_change(name):
    model = _tiny(name)
    batch = _batch(model)
    first, again = _run(model, batch), _run(model, batch)
    moved = _run(model, _hidden_changed(name, model, batch))
    views = {"brainsymphony": ["fmri", "sc", "fusion"]}.get(name, ["default"])
    assert list(first) == views
    for view in views:
        for p, q, r in zip(first[view], again[view], moved[view], strict=True):
            n = p.target.shape[0]
            assert p.target.dim() == 1 and n > 0 and p.prediction.shape == (n,)
            assert all(b.shape == (n,) for b in p.baselines.values()) and len(p.baselines) >= 2
            assert torch.equal(p.prediction, q.prediction) and torch.equal(p.target, q.target)
            assert not torch.allclose(p.target, r.target)     # the hidden values did move
            for key, base in p.baselines.items():
                torch.testing.assert_close(base, r.baselines[key], msg=f"{view} {key}")


def test_brainmass_baselines_ignore_the_hidden_rows_and_columns(monkeypatch):
    model = _tiny("brainmass")
    x = _batch(model)["bold"]
    fc = torch.corrcoef(x[0])[None].repeat(3, 1, 1)
    rows = masking.random_subset(3, 8, model.mrm_ratio, torch.Generator().manual_seed(7))
    moved = fc.clone()
    moved[rows[:, :, None] | rows[:, None, :]] += 0.5
    outputs = []
    for matrix in (fc, moved):
        monkeypatch.setattr(model, "views", lambda x, generator, m=matrix: (m, m))
        outputs.append(_run(model, {"bold": x})["default"][0])
    before, after = outputs
    assert before.task == "fc_masked_rows" and before.target.shape == (3 * 7,)  # no diagonal
    assert not torch.allclose(before.target, after.target)
    for key in ("column_mean", "visible_mean"):
        torch.testing.assert_close(before.baselines[key], after.baselines[key])


@pytest.mark.parametrize("name", ["brainsymphony", "brainlm", "brainjepa"])
def test_pretext_masks_are_the_pretraining_masks(name):
    model = _tiny(name, **({"loss": "mse"} if name == "brainjepa" else {}))
    batch = _batch(model)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        terms = model.pretrain_losses(batch, generator=gen) if name == "brainsymphony" else \
            {"loss": model.pretrain_loss(batch, generator=gen)}
    views = _run(model, batch, seed=3)
    tasks = {p.task: F.mse_loss(p.prediction, p.target) for ps in views.values() for p in ps}
    if name == "brainsymphony":
        torch.testing.assert_close(tasks["fmri_masked_cells"], terms["fmri_cells"])
        torch.testing.assert_close(tasks["sc_masked_edges"], terms["sc_edges"])
    else:
        torch.testing.assert_close(next(iter(tasks.values())), terms["loss"])


# -- the check end to end ------------------------------------------------------------------
def test_a_learnable_task_is_learned_and_an_untrained_model_is_not(toy_runs):
    cohort = toy_runs["cohort"]
    learned = training_health(toy_runs["trained"], cohort, seed=1, batch_size=4)
    untrained = training_health(toy_runs["untrained"], cohort, seed=1, batch_size=4)
    for table in (learned, untrained):
        assert list(table.columns) == list(HEALTH_COLUMNS) and table["view"].tolist() == ["default"]
    row, raw = learned.iloc[0], untrained.iloc[0]
    assert row["pretext_score"] > 0.5 > row["trivial_score"], row["reason"]
    assert row["learned"] and row["reason"].startswith("masked_rois: beat")
    assert row["embedding_source"] == "held-out windows" and row["n_subjects"] == 4
    assert not raw["learned"] and "did not beat" in raw["reason"]
    assert raw["pretext_score"] <= 0.0 <= raw["trivial_score"]
    assert raw["n_windows"] == 12 and row["model"] == "toy-copy"
    assert json.loads(row["objectives"])[0]["baselines"].keys() >= {"roi_mean", "interpolation"}
    again = training_health(toy_runs["trained"], cohort, seed=1, batch_size=4)
    pd.testing.assert_frame_equal(learned, again)                       # deterministic


def test_collapsed_embeddings_are_not_learned(toy_runs, tmp_path):
    cohort = toy_runs["cohort"]
    emb = embed_checkpoint(toy_runs["trained"], cohort, tmp_path / "emb.npz", progress=False)
    row = training_health(toy_runs["trained"], cohort, embeddings=emb).iloc[0]
    assert row["learned"] and row["embedding_source"] == "embeddings file"
    emb.views["default"]["subject"][:] = 1.0
    row = training_health(toy_runs["trained"], cohort, embeddings=emb).iloc[0]
    assert not row["learned"] and row["collapsed"]
    assert row["reason"] == "collapsed: all 4 dimensions dead"
    other = embed_checkpoint(toy_runs["untrained"], cohort, progress=False)
    with pytest.raises(HealthError, match="were made by checkpoint"):
        training_health(toy_runs["trained"], cohort, embeddings=other)


def test_pretraining_subjects_are_refused(toy_runs):
    cohort = toy_runs["cohort"]
    with pytest.raises(HealthError, match="were pretrained on"):
        training_health(toy_runs["trained"], cohort, ["sub-00", "sub-05"])
    with pytest.raises(HealthError, match="not in the store"):
        training_health(toy_runs["trained"], cohort, ["sub-05", "sub-99"])
    table = training_health(toy_runs["trained"], cohort, ["sub-00", "sub-05"],
                            allow_pretrained_subjects=True)
    assert table.iloc[0]["n_subjects"] == 2


def test_a_model_without_pretext_task_is_refused(tmp_path):
    from toy_models import make_model

    cohort = write_toy_store(tmp_path / "toy", n_subjects=4)
    dataset = WindowDataset(cohort, 20)
    config = TrainConfig(steps=1, batch_size=4, warmup_steps=0, progress=False, device="cpu")
    final = train(make_model(), dataset, config, tmp_path / "run").final_path
    with pytest.raises(HealthError, match="has no pretext task"):
        training_health(final, cohort, ["sub-00", "sub-01"])


def test_collect_pretext_pools_every_window(toy_runs):
    from bsym.evaluate.health import held_out_windows
    from bsym.train.checkpoint import load_trained

    model, ckpt = load_trained(toy_runs["trained"])
    dataset = held_out_windows(ckpt, toy_runs["cohort"], HELD_OUT, max_windows=5)
    views, arrays, means, n = collect_pretext(model, dataset, batch_size=2)
    assert n == 5 and views == {"default": ("masked_rois",)}
    assert arrays["masked_rois"]["target"].shape == (5 * 2 * 20,)   # 2 hidden ROIs x 20 points
    assert set(means["default"]) <= set(HELD_OUT)


# -- figure, tracking, command -------------------------------------------------------------
def test_loss_curves_per_stage(tmp_path):
    ckpt = {"model": {"name": "m", "preset": "tiny"},
            "history": {"step": [1, 2, 3, 4], "stage": ["a", "a", "b", "b"],
                        "loss": [4.0, 3.0, 2.0, 1.0], "lr": [0.1] * 4},
            "val_history": [{"step": 2, "stage": "a", "loss": 3.5},
                            {"step": 4, "stage": "b", "loss": 1.5}]}
    path = plot_loss_curves(ckpt, tmp_path / "figs" / "loss.png")
    assert path.read_bytes()[:4] == PNG
    assert [p.name for p in path.parent.iterdir()] == ["loss.png"]   # no temporary file left


def test_health_metrics_go_to_the_pretraining_run(tmp_path):
    class Recorder:
        enabled = True

        def __init__(self):
            self.calls = []

        def log_metrics(self, metrics, step=None, *, run_id=None):
            self.calls.append(("metrics", run_id, metrics))

        def set_tags(self, tags, *, run_id=None):
            self.calls.append(("tags", run_id, tags))

        def log_artifact(self, path, artifact_path=None, *, run_id=None):
            self.calls.append(("artifact", run_id, path))

    table = pd.DataFrame([{"view": "fmri", "pretext_score": 0.4, "trivial_score": 0.1,
                           "effective_rank": 7.0, "dead_fraction": 0.0, "learned": True,
                           "reason": "ok"}])
    tracker = Recorder()
    log_health(tracker, table, "run123", artifacts=[tmp_path / "t.parquet"])
    kinds = {kind: (run, payload) for kind, run, payload in tracker.calls}
    assert kinds["metrics"] == ("run123", {"health.fmri.pretext_score": 0.4,
                                           "health.fmri.trivial_score": 0.1,
                                           "health.fmri.effective_rank": 7.0,
                                           "health.fmri.dead_fraction": 0.0,
                                           "health.fmri.learned": 1.0})
    assert kinds["tags"] == ("run123", {"health.fmri.reason": "ok"})
    class Missing:
        uri = "sqlite:///nowhere.db"

        class client:  # noqa: N801 - stands in for MlflowClient
            @staticmethod
            def get_run(run_id):
                raise LookupError(run_id)

    with pytest.raises(HealthError, match="run123 of the pretraining is not in"):
        check_tracked_run(Missing(), "run123")
    (tmp_path / "run.json").write_text(json.dumps({"mlflow_run_id": "abc"}))
    assert pretraining_run_id(tmp_path / "final.pt") == "abc"
    assert pretraining_run_id(tmp_path / "elsewhere" / "final.pt") is None


def test_health_command_writes_table_and_figure(tmp_path, capsys):
    store = write_toy_store(tmp_path / "toy", n_subjects=6, n_rois=8, n_timepoints=80)
    (tmp_path / "pre.txt").write_text("sub-00\nsub-01\nsub-02\n")
    (tmp_path / "bad.txt").write_text("sub-00\nsub-04\n")
    data = ["--data", str(store.path)]
    assert main(["pretrain", "--model", "brainlm", *data, "--out", str(tmp_path / "run"),
                 "--subjects-file", str(tmp_path / "pre.txt"), "--steps", "2",
                 "--batch-size", "4", "--window", "40", "--device", "cpu", "--no-tracking",
                 "--quiet"]) == 0
    health = ["health", "--checkpoint", str(tmp_path / "run/final.pt"), *data, "--no-tracking",
              "--quiet"]
    out = tmp_path / "out" / "health.parquet"
    assert main([*health, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = pd.read_parquet(out)
    assert table["view"].tolist() == ["default"] and table["model"].tolist() == ["brainlm"]
    assert table["n_subjects"].tolist() == [3] and "masked_patches" in printed
    assert (tmp_path / "out" / "health_loss.png").read_bytes()[:4] == PNG
    assert sorted(p.name for p in out.parent.iterdir()) == ["health.parquet", "health_loss.png"]
    assert main([*health, "--out", str(tmp_path / "bad.parquet"), "--subjects-file",
                 str(tmp_path / "bad.txt")]) == 2
    assert "were pretrained on" in capsys.readouterr().err
    assert not (tmp_path / "bad.parquet").exists()
    with pytest.raises(SystemExit) as info:
        main(["health", "--help"])
    assert info.value.code == 0 and "--embeddings" in capsys.readouterr().out
