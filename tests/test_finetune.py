"""LP-FT fine-tuning: the linear-probe head, class weights, the encoder's learning rate,
and predictions of both classes where the label is learnable."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toy_models import pretrain_toy

import bsym.train.engine as engine
from bsym.data import CohortWriter, open_cohort
from bsym.data.dataset import WindowDataset
from bsym.data.preprocess import RobustScaler
from bsym.evaluate import EvaluationError
from bsym.evaluate.finetune import FineTuneConfig, FineTuneModel, fine_tune, probe_initialise
from bsym.evaluate.foldtrain import LabelledCohort, WindowSource
from bsym.evaluate.splits import make_splits
from bsym.train.checkpoint import load_trained
from bsym.train.engine import TrainConfig, evaluate_loss

torch.set_num_threads(1)
WINDOW = 20
FAST = FineTuneConfig(max_steps=30, eval_every=10, patience=2, lr=3e-4, batch_size=8,
                      warmup_steps=5, device="cpu")


def write_planted_store(path, *, n_subjects=36, effect=0.8, seed=0):
    """``group`` (1 in 3 subjects ``yes``) shifts the level of half of the ROIs; ``trait``
    follows it loosely; ``dose`` has three numeric classes."""
    rng = np.random.default_rng(seed)
    shift = np.r_[np.ones(4), np.zeros(4)][:, None]
    with CohortWriter(path, source={"name": "planted"}, atlas="toy") as w:
        w.set_rois([f"r{i}" for i in range(8)], networks=["a", "b"] * 4)
        for s in range(n_subjects):
            g = int(s % 3 == 0)
            trait = float(g + 0.5 * rng.standard_normal())
            for session in ("1", "2"):
                bold = rng.standard_normal((8, 60)) + effect * trait * shift + 3.0
                w.add_scan(subject=f"s{s:02d}", session=session, tr=2.0,
                           bold=bold.astype(np.float32), group="yes" if g else "no",
                           trait=trait, dose=s % 3)
    return open_cohort(path)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted")
    cohort = write_planted_store(folder / "store")
    return cohort, pretrain_toy(cohort, WINDOW, folder / "run")


def fold_data(cohort, ckpt, label, task, tmp_path, config=FAST):
    """A fresh model and the fit/validation windows of fold 0."""
    splits = make_splits(cohort, tmp_path / f"{label}.json", label=label, n_splits=3,
                         inner_splits=2)
    fold = splits[0]
    val = sorted(fold.inner[0][1])
    fit = [s for s in fold.train if s not in set(val)]
    labelled = LabelledCohort(cohort, label, task)
    target = labelled.target(fit, "fold 0")
    encoder, stored = load_trained(ckpt)
    source = WindowSource(cohort, {"window": WINDOW},
                          RobustScaler.from_state_dict(stored["extra"]["scaler"]))
    fit_set, val_set, _ = source.split(fit, val, label)
    model = FineTuneModel(encoder, target.n_outputs, 16, task=task,
                          class_values=target.class_values, target_mean=target.mean,
                          target_sd=target.sd, class_weights=target.class_weights,
                          encoder_lr_scale=config.encoder_lr_scale)
    return model, target, fit, fit_set, val_set


def window_outputs(model, dataset):
    """Frozen subject embeddings (by the encoder itself) and the model's outputs."""
    from torch.utils.data import DataLoader

    model.eval()
    xs, outs = [], []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=16):
            inputs = {"bold": batch["bold"]}
            xs.append(model.encoder.embed(inputs).subject.double())
            outs.append(model(inputs).double())
    return torch.cat(xs).numpy(), torch.cat(outs).numpy()


# -- class weights -------------------------------------------------------------------------
def test_class_weights_are_inverse_to_the_fit_subjects_class_frequencies(pretrained):
    cohort, _ = pretrained
    subjects = sorted(cohort.subjects["subject"].unique())
    fit = subjects[:12] + subjects[13:]  # drops s12, a "yes": 11 yes, 24 no
    target = LabelledCohort(cohort, "group", "classification").target(fit, "test")
    n_no, n_yes = 24, 11
    assert target.class_weights == pytest.approx((35 / (2 * n_no), 35 / (2 * n_yes)))
    # subject-weighted mean 1; the rare class weighs more
    assert (n_no * target.class_weights[0] + n_yes * target.class_weights[1]) / 35 == \
        pytest.approx(1.0)
    dose = LabelledCohort(cohort, "dose", "classification").target(subjects, "test")
    assert dose.class_values == (0.0, 1.0, 2.0)
    assert dose.class_weights == pytest.approx((1.0, 1.0, 1.0))
    assert LabelledCohort(cohort, "trait", "regression").target(subjects, "t").class_weights \
        is None


def test_the_loss_is_class_weighted(pretrained):
    cohort, ckpt = pretrained
    encoder, _ = load_trained(ckpt)
    weights = (0.5, 2.0)
    model = FineTuneModel(encoder, 2, 16, class_values=(0.0, 1.0), class_weights=weights)
    batch = {"bold": torch.randn(6, 8, WINDOW)}
    y = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    logits = model(batch)
    expected = (torch.tensor([0.5] * 4 + [2.0] * 2) *
                F.cross_entropy(logits, y.long(), reduction="none")).mean()
    loss = float(model.supervised_loss(batch, y).detach())
    assert loss == pytest.approx(float(expected.detach()), rel=1e-5)
    assert loss != pytest.approx(float(F.cross_entropy(logits, y.long()).detach()))
    with pytest.raises(EvaluationError, match="one per class"):
        FineTuneModel(encoder, 2, 16, class_weights=(1.0, 1.0, 1.0))


# -- the linear-probe head -----------------------------------------------------------------
@pytest.mark.parametrize(("label", "task"), [("group", "classification"),
                                             ("dose", "classification"),
                                             ("trait", "regression")])
def test_the_lp_head_reproduces_the_probe_on_the_fit_windows(pretrained, tmp_path, label,
                                                              task):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cohort, ckpt = pretrained
    model, target, fit, fit_set, val_set = fold_data(cohort, ckpt, label, task, tmp_path)
    info = probe_initialise(FAST)(model, fit_set, val_set, label, FAST)
    assert info["lp_param"] in (FAST.lp_cs if task == "classification" else FAST.lp_alphas)
    x, out = window_outputs(model, fit_set)
    values = fit_set.table.set_index("scan").loc[[s for s, _ in fit_set.index], label]
    if task == "classification":
        y = np.searchsorted(np.unique(cohort.subjects[label].astype(str)), values.astype(str))
        probe = make_pipeline(StandardScaler(), LogisticRegression(
            C=info["lp_param"], class_weight="balanced", max_iter=5000)).fit(x, y)
        proba = torch.softmax(torch.as_tensor(out), dim=1).numpy()
        np.testing.assert_allclose(proba, probe.predict_proba(x), atol=1e-4)
        assert (proba.argmax(1) == probe.predict(x)).mean() > 0.99
    else:
        z = (values.to_numpy(dtype=float) - target.mean) / target.sd
        probe = make_pipeline(StandardScaler(), Ridge(alpha=info["lp_param"])).fit(x, z)
        np.testing.assert_allclose(out[:, 0], probe.predict(x), atol=1e-4)
    # the probe's validation loss is the loss early stopping reads at step 0
    val_loss = evaluate_loss(model, val_set, batch_size=8, label=label)
    assert val_loss == pytest.approx(info["lp_val_loss"], rel=1e-4)


# -- the encoder's learning rate -----------------------------------------------------------
def test_the_encoder_learns_at_a_fraction_of_the_head_learning_rate(pretrained, tmp_path):
    cohort, ckpt = pretrained
    deltas = {}
    for scale in (1.0, 0.1):
        config = dataclasses.replace(FAST, encoder_lr_scale=scale)
        model, *_, fit_set, _ = fold_data(cohort, ckpt, "group", "classification", tmp_path,
                                          config)
        torch.manual_seed(1)
        model.head.reset_parameters()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        engine.train(model, fit_set, TrainConfig(steps=1, batch_size=8, lr=1e-2,
                                                 warmup_steps=0, progress=False,
                                                 device="cpu", label="group"))
        deltas[scale] = {k: v - before[k] for k, v in model.state_dict().items()}
    for name, full in deltas[1.0].items():
        if name.startswith("encoder.") and full.abs().max() > 0:
            torch.testing.assert_close(deltas[0.1][name], 0.1 * full, rtol=1e-4, atol=1e-7)
        elif name.startswith("head."):
            torch.testing.assert_close(deltas[0.1][name], full)
    assert any(d.abs().max() > 0 for k, d in deltas[1.0].items() if k.startswith("encoder."))
    with pytest.raises(EvaluationError, match="encoder_lr_scale must be > 0"):
        FineTuneConfig(encoder_lr_scale=0.0)


# -- the whole protocol --------------------------------------------------------------------
def test_lp_ft_predicts_both_classes_of_a_learnable_label(pretrained, tmp_path):
    cohort, ckpt = pretrained
    splits = make_splits(cohort, tmp_path / "s.json", label="group", n_splits=3,
                         inner_splits=2)
    config = dataclasses.replace(FAST, max_windows=2)  # of 3 per scan
    frame = fine_tune(ckpt, cohort, splits, "group", config=config, progress=False)
    print(frame[["fold", "auroc", "balanced_accuracy", "pred_counts", "best_step",
                 "lp_param"]])
    assert frame["lp_init"].all() and not frame["single_class"].any()
    assert (frame["n_pred_classes"] == 2).all()
    assert frame["balanced_accuracy"].mean() > 0.7 and frame["auroc"].mean() > 0.85
    # every window of every test scan is predicted (training reads at most max_windows)
    per_scan = len(WindowDataset(cohort, WINDOW, scans=cohort.subjects["scan"][:1]))
    assert per_scan == 3
    assert (frame["n_test_windows"] == frame["n_test"] * 2 * per_scan).all()


def test_a_random_head_at_a_small_learning_rate_predicts_one_class(pretrained, tmp_path):
    """The failure LP-FT fixes: the head barely moves from its random start."""
    cohort, ckpt = pretrained
    splits = make_splits(cohort, tmp_path / "s.json", label="group", n_splits=3,
                         inner_splits=2)
    plain = dataclasses.replace(FAST, lp_init=False, class_balanced=False,
                                encoder_lr_scale=1.0, lr=1e-5)
    frame = fine_tune(ckpt, cohort, splits, "group", config=plain, progress=False)
    assert not frame["lp_init"].any() and "lp_param" not in frame
    assert frame["single_class"].all()


def test_cli_options_reach_the_rows_and_the_config_hash(pretrained, tmp_path, capsys):
    from bsym.cli import main
    from bsym.evaluate.results import ResultTable

    cohort, ckpt = pretrained
    common = ["finetune", "--checkpoint", str(ckpt), "--data", str(cohort.path), "--task",
              "group", "--splits", str(tmp_path / "s.json"), "--n-folds", "3",
              "--inner-folds", "2", "--fold", "0", "--max-steps", "10", "--eval-every", "5",
              "--batch-size", "8", "--device", "cpu", "--results",
              str(tmp_path / "r.parquet"), "--no-tracking", "--quiet"]
    table = ResultTable(tmp_path / "r.parquet")
    assert main(common) == 0
    first = table.read().iloc[0]
    assert first["lp_init"] and np.isfinite(first["lp_param"]) and not first["single_class"]
    assert main([*common, "--no-lp-init", "--no-class-balance",
                 "--encoder-lr-scale", "0.5"]) == 0
    second = table.read()
    assert len(second) == 1 and not second["lp_init"].iloc[0]   # recomputed, not reused
    assert second["config_hash"].iloc[0] != first["config_hash"]
    assert "finetune toy-mae on group" in capsys.readouterr().out
