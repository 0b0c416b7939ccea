"""Attention maps per ROI and network, contrasted between conditions with permutations
and FDR: a planted network stands out, null data gives nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_models import ToyMAE

from bsym.cli import main
from bsym.data import CohortWriter, open_cohort
from bsym.data.dataset import WindowDataset
from bsym.data.preprocess import RobustScaler
from bsym.evaluate import EvaluationError
from bsym.evaluate.attention import (
    attention_maps,
    contrast_attention,
    plot_network_contrast,
    roi_maps,
    sign_flip_test,
    summarise,
)
from bsym.models import ModelSpec, register
from bsym.train.engine import TrainConfig, train

torch.set_num_threads(1)
NETWORKS = [f"net{i % 3}" for i in range(9)]


class ToyAttention(ToyMAE):
    """Every query attends to key ROI j in proportion to a power of its amplitude
    (softmax-normalised, or unnormalised with ``normalise=False``)."""

    def __init__(self, *args, normalise=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.normalise = normalise

    def attention(self, batch):
        x = batch["bold"]
        b, r, _ = x.shape
        logits = 2.0 * torch.log(x.std(dim=-1) + 1e-3)
        weights = torch.softmax(logits, dim=-1) if self.normalise else torch.sigmoid(logits)
        a = weights[:, None, :].expand(b, r, r)
        return {"spatial": torch.stack([a, a])[:, :, None],   # layers, B, heads, R, R
                "gate": torch.zeros(b, r, r),                  # 3-D: not a map unless named
                "time": torch.zeros(b, 1, r, 20)}              # not ROI x ROI


register(ModelSpec(name="toy-attn", factory=ToyAttention, description="test: planted attention",
                   presets={"tiny": {"n_rois": 9, "n_timepoints": 20, "width": 8}}))


def write_condition_store(path, *, effect, n_subjects=16, seed=0):
    """Pre/post sessions; in "post" the ROIs of net1 are louder by ``effect`` (relative)."""
    rng = np.random.default_rng(seed)
    net1 = np.array([n == "net1" for n in NETWORKS])
    with CohortWriter(path, source={"name": "attention-toy", "effect": effect}, atlas="toy") as w:
        w.set_rois([f"roi{i}" for i in range(9)], networks=NETWORKS)
        for s in range(n_subjects):
            amplitude = np.exp(0.2 * rng.standard_normal(9))
            for session, condition in (("1", "pre"), ("2", "post")):
                gain = amplitude * np.exp(0.05 * rng.standard_normal(9))
                if condition == "post":
                    gain = gain * np.where(net1, 1 + effect * (1 + 0.3 * rng.standard_normal()),
                                           1.0)
                bold = gain[:, None] * rng.standard_normal((9, 60))
                w.add_scan(subject=f"sub-{s:02d}", session=session, tr=2.0,
                           bold=bold.astype(np.float32), condition=condition,
                           group="a" if s % 2 else "b")
    return open_cohort(path)


def _maps(cohort, normalise=True):
    dataset = WindowDataset(cohort, 20)
    scaler = dataset.fit_scaler(RobustScaler())
    return attention_maps(ToyAttention(n_rois=9, width=8, normalise=normalise), cohort,
                          window=20, scaler=scaler, progress=False)


def test_planted_network_stands_out(tmp_path):
    cohort = write_condition_store(tmp_path / "planted", effect=0.5)
    maps = _maps(cohort)
    assert sorted(maps.maps) == ["spatial"] and maps.maps["spatial"].shape == (32, 9, 9)
    result = contrast_attention(maps, cohort, n_permutations=2000)
    assert result.paired and result.levels == ("pre", "post")
    table = result.table
    net_in = table[table["family"] == "net_in"].set_index("feature")
    print(net_in[["diff", "t", "p", "q", "significant"]])
    assert net_in.loc["net1", "significant"] and net_in.loc["net1", "diff"] > 0
    assert net_in["t"].abs().idxmax() == "net1"
    roi_in = table[table["family"] == "roi_in"].set_index("feature")
    net1_rois = [f"roi{i}" for i in range(9) if NETWORKS[i] == "net1"]
    assert roi_in.loc[net1_rois, "significant"].all() and (roi_in.loc[net1_rois, "t"] > 0).all()
    pairs = table[table["family"] == "net_pair"]
    strongest = pairs.loc[pairs["t"].abs().idxmax()]
    assert strongest["target"] == "net1"  # attention *to* net1 rose
    figure = plot_network_contrast(result, tmp_path / "heat.png")
    assert figure.stat().st_size > 1000
    # Without the softmax coupling the keys, only net1's incoming attention changes.
    plain = contrast_attention(_maps(cohort, normalise=False), cohort, n_permutations=2000)
    hits = plain.significant()
    assert set(hits.loc[hits["family"] == "net_in", "feature"]) == {"net1"}
    assert set(hits.loc[hits["family"] == "roi_in", "feature"]) == set(net1_rois)
    assert set(hits.loc[hits["family"] == "net_pair", "target"]) == {"net1"}


def test_null_data_survives_nothing(tmp_path):
    cohort = write_condition_store(tmp_path / "null", effect=0.0, seed=1)
    result = contrast_attention(_maps(cohort), cohort, n_permutations=2000)
    assert not result.table["significant"].any()
    assert len(result.table) == 9 + 9 + 3 + 3 + 9


def test_sign_flip_test_is_exact_and_calibrated():
    t, p = sign_flip_test(np.array([[1.0], [2.0], [1.5], [0.5]]))
    assert p[0] == pytest.approx(2 / 16)  # all-positive and all-negative patterns
    rng = np.random.default_rng(0)
    _, p = sign_flip_test(rng.standard_normal((12, 400)), n_permutations=2000, seed=1)
    assert 0.02 < np.mean(p < 0.05) < 0.09
    from statsmodels.stats.multitest import multipletests

    assert not multipletests(p, method="fdr_bh")[0].any()
    _, p_shift = sign_flip_test(rng.standard_normal((12, 5)) + 2.0, n_permutations=2000)
    assert (p_shift < 0.01).all()


def test_summaries_and_map_shapes():
    a = np.zeros((1, 4, 4))
    a[0, 0, 2] = a[0, 1, 2] = 1.0   # ROIs 0 and 1 (network x) attend to ROI 2 (network y)
    a[0, 2, 2] = 5.0                # self-attention is left out
    out = summarise(a, np.array(["x", "x", "y", "y"]))
    np.testing.assert_allclose(out["roi_in"][0], [[0, 0, 2, 0]])
    np.testing.assert_allclose(out["roi_out"][0], [[1, 1, 0, 0]])
    np.testing.assert_allclose(out["net_in"][0], [[0, 1]])
    pairs = dict(zip(out["net_pair"][1]["feature"], out["net_pair"][0][0]))
    assert pairs["x->y"] == pytest.approx(0.5) and pairs["y->y"] == 0.0
    x = torch.rand(2, 3, 4, 4)
    assert roi_maps(x, 4)["attention"].shape == (2, 4, 4)
    with pytest.raises(EvaluationError, match="no ROI x ROI map"):
        roi_maps({"time": torch.rand(2, 4, 7)}, 4)
    assert list(roi_maps({"gate": torch.rand(2, 4, 4)}, 4, names=["gate"])) == ["gate"]


def test_bad_contrasts(tmp_path):
    cohort = write_condition_store(tmp_path / "c", effect=0.0, n_subjects=6)
    maps = _maps(cohort)
    with pytest.raises(EvaluationError, match="expected two levels"):
        contrast_attention(maps, cohort, levels=("pre", "later"))
    with pytest.raises(EvaluationError, match="has scans in both"):
        contrast_attention(maps, cohort, paired=False)
    unpaired = contrast_attention(maps, cohort, factor="group", n_permutations=200)
    assert not unpaired.paired and unpaired.levels == ("a", "b")


def test_cli_attention(tmp_path, capsys):
    cohort = write_condition_store(tmp_path / "planted", effect=0.5)
    dataset = WindowDataset(cohort, 20)
    scaler = dataset.fit_scaler(RobustScaler())
    from bsym.models import build

    result = train(build("toy-attn"), dataset,
                   TrainConfig(steps=1, batch_size=4, warmup_steps=0, progress=False,
                               device="cpu"),
                   tmp_path / "run", extra={"scaler": scaler.state_dict()})
    out = tmp_path / "att"
    assert main(["attention", "--checkpoint", str(result.final_path), "--data",
                 str(cohort.path), "--out", str(out), "--permutations", "500", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "paired contrast post - pre" in text and "net_in" in text
    assert (out / "contrast.parquet").exists() and (out / "network_contrast_spatial.png").exists()
    assert main(["attention", "--checkpoint", str(result.final_path), "--data",
                 str(cohort.path), "--out", str(out), "--factor", "dose", "--quiet"]) == 2
    assert "no label column 'dose'" in capsys.readouterr().err
