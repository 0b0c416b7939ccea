"""Network identification: clustering and k-NN against atlas networks, FC rows beside."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_toy_store

from bsym.cli import main
from bsym.data import CohortWriter, open_cohort
from bsym.data.simulate import simulate_cohort
from bsym.evaluate import EvaluationError
from bsym.evaluate.embeddings import feature_embeddings
from bsym.evaluate.netid import (
    BASELINE,
    group_fc,
    identify_networks,
    knn_leave_one_out,
    network_identification,
    roi_networks,
)
from bsym.evaluate.results import ResultTable

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


def test_end_to_end_rows_beside_the_fc_baseline(simulated, tmp_path):
    emb = feature_embeddings(simulated, "sc")
    table = ResultTable(tmp_path / "r.parquet")
    frame = network_identification(emb, simulated, results=table,
                                   figure=tmp_path / "confusion.png")
    assert frame["model"].tolist() == ["connectome-sc", BASELINE]
    assert (frame["protocol"] == "network_identification").all()
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    assert len(table.read()) == 2
    cached = network_identification(emb, simulated, results=table)
    np.testing.assert_allclose(cached["ari_kmeans"], frame["ari_kmeans"])


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
