"""Network identification: clustering and k-NN against atlas networks, FC rows beside."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bsym.cli import main
from bsym.data import CohortWriter, open_cohort
from bsym.data.simulate import simulate_cohort
from bsym.evaluate import EvaluationError
from bsym.evaluate.embeddings import compute_embeddings, feature_embeddings
from bsym.evaluate.netid import (
    BASELINE,
    SC_BASELINE,
    group_fc,
    identify_networks,
    knn_leave_one_out,
    network_identification,
    roi_networks,
)
from bsym.evaluate.results import ResultTable
from bsym.models.base import BrainModel, Embeddings
from bsym.testing import write_toy_store

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """20 subjects, 70 ROIs in 7 planted networks, one 300-point session each."""
    return simulate_cohort(tmp_path_factory.mktemp("sim") / "sim", n_subjects=20, n_rois=70,
                           n_timepoints=300, sessions=1, seed=0, progress=False)


def test_fc_rows_recover_the_planted_networks(simulated):
    networks = roi_networks(simulated)
    scores = identify_networks(group_fc(simulated), networks, seed=0)
    null = [identify_networks(group_fc(simulated), np.random.default_rng(k).permutation(networks))
            for k in range(3)]
    print({k: round(scores[k], 3) for k in ("ari_kmeans", "nmi_kmeans", "ari_spectral",
                                            "knn_accuracy", "majority_rate")})
    assert scores["n_networks"] == 7 and scores["n_rois"] == 70
    assert scores["ari_kmeans"] > 0.35 and scores["ari_spectral"] > 0.35
    assert scores["knn_accuracy"] > 2 * scores["majority_rate"]
    assert max(s["ari_kmeans"] for s in null) < 0.1
    assert max(s["knn_accuracy"] for s in null) < scores["knn_accuracy"] - 0.3
    assert scores["confusion"].sum() == 70


def test_knn_leave_one_out_on_separated_groups():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10
    x = np.concatenate([c + rng.normal(size=(5, 3)) for c in centres])
    labels = np.repeat(["a", "b", "c"], 5)
    assert (knn_leave_one_out(x, labels, 3) == labels).all()
    scores = identify_networks(x, labels)
    assert scores["ari_kmeans"] == pytest.approx(1.0) and scores["knn_accuracy"] == 1.0


def test_end_to_end_rows_beside_the_baselines_over_seeds(simulated, tmp_path):
    emb = feature_embeddings(simulated, "sc")
    table = ResultTable(tmp_path / "r.parquet")
    frame = network_identification(emb, simulated, results=table, seeds=3, permutations=4,
                                   figure=tmp_path / "confusion.png")
    real = frame[frame["control"] == "none"]
    assert sorted(set(real["model"])) == sorted(["connectome-sc", BASELINE, SC_BASELINE])
    assert real.groupby("model")["seed"].apply(sorted).tolist() == [[0, 1, 2]] * 3
    chance = frame[frame["control"] == "permuted_networks"]
    assert len(chance) == 4 * 3 and set(chance["replicate"]) == {0, 1, 2, 3}
    assert chance["ari_kmeans"].abs().max() < 0.15
    assert real["ari_kmeans"].mean() > chance["ari_kmeans"].mean() + 0.2
    assert (frame["protocol"] == "network_identification").all()
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    assert len(table.read()) == len(frame)
    cached = network_identification(emb, simulated, results=table, seeds=3, permutations=4)
    assert len(cached) == len(frame)
    np.testing.assert_allclose(np.sort(cached["ari_kmeans"]), np.sort(frame["ari_kmeans"]))


class PositionCode(BrainModel):
    """ROI embedding = a fixed sine/cosine code of the ROI's index (+ its mean signal)."""

    def __init__(self, n_rois, dim=16):
        super().__init__()
        index = torch.arange(n_rois, dtype=torch.float32)[:, None]
        freq = torch.arange(1, dim // 2 + 1, dtype=torch.float32)[None] / n_rois
        self.register_buffer("code", torch.cat([torch.sin(np.pi * index * freq),
                                                torch.cos(np.pi * index * freq)], dim=1))
        self.scale = torch.nn.Parameter(torch.ones(()))

    def embed(self, batch):
        x = batch["bold"]
        roi = self.code[None] + 0.01 * self.scale * x.mean(dim=2, keepdim=True)
        return Embeddings(subject=roi.mean(dim=1), roi=roi)


@pytest.mark.parametrize("order", ["original", "shuffled"])
def test_a_position_code_identifies_networks_only_in_atlas_order(order, tmp_path):
    cohort = simulate_cohort(tmp_path / order, n_subjects=6, n_rois=70, n_timepoints=120,
                             sessions=1, n_sites=1, seed=0, progress=False, roi_order=order)
    emb = compute_embeddings(PositionCode(70), cohort, window=40, progress=False)
    frame = network_identification(emb, cohort, seeds=3, permutations=30)
    knn = frame.groupby("control")["knn_accuracy"]
    mean, sd = knn.mean(), knn.std()
    print(order, mean.round(3).to_dict())
    assert np.isfinite(emb.position()).all() and emb.position().shape == (70, 16)
    if order == "original":  # ROIs numbered network by network: the code alone "identifies"
        assert mean["position_only"] > 0.8
    else:  # within the spread of the chance level
        assert mean["position_only"] < mean["permuted_networks"] + 3 * sd["permuted_networks"]


def test_unlabelled_rois_and_missing_networks(tmp_path):
    rng = np.random.default_rng(0)
    with CohortWriter(tmp_path / "nonet", source={"name": "x"}, atlas="toy") as w:
        for s in range(3):
            w.add_scan(subject=f"s{s}", tr=2.0, bold=rng.standard_normal((6, 40)))
    with pytest.raises(EvaluationError, match="no network labels"):
        roi_networks(open_cohort(tmp_path / "nonet"))
    x = rng.normal(size=(9, 4))
    labels = np.array(["a", "a", "a", "b", "b", "b", None, None, "a"], dtype=object)
    assert identify_networks(x, labels)["n_rois"] == 7


def test_cli_netid(tmp_path, capsys):
    store = write_toy_store(tmp_path / "toy", n_subjects=6)
    assert main(["netid", "--features", "fc", "--data", str(store.path), "--no-tracking",
                 "--results", str(tmp_path / "r.parquet"), "--figure",
                 str(tmp_path / "fig.png"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "fc_rows" in out and "ari_kmeans" in out and (tmp_path / "fig.png").exists()
