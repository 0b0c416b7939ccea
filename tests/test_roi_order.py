"""A shuffled ROI order: one fixed, seeded permutation applied to every array and table."""

import json

import numpy as np
import pytest

from bsym.data import CohortWriter, open_cohort


def _write(path, order, seed=0, n_rois=9):
    rng = np.random.default_rng(3)
    bold = rng.standard_normal((n_rois, 40)).astype(np.float32)
    a = np.triu(rng.gamma(1.0, 50.0, size=(n_rois, n_rois)), 1)
    sc = (a + a.T).astype(np.float32)
    with CohortWriter(path, source={"name": "toy"}, atlas="toy", roi_order=order,
                      roi_seed=seed) as writer:
        writer.set_rois([f"roi{i}" for i in range(n_rois)],
                        networks=[f"net{i // 3}" for i in range(n_rois)])
        writer.add_scan(subject="s1", tr=2.0, bold=bold)
        writer.add_matrix("sc", "s1", sc)
    return open_cohort(path), bold, sc


def test_shuffled_store_is_the_source_under_one_recorded_permutation(tmp_path):
    cohort, bold, sc = _write(tmp_path / "shuffled", "shuffled", seed=4)
    order = np.array(cohort.manifest["roi_order"]["source_index"])
    assert sorted(order) == list(range(9)) and not np.array_equal(order, np.arange(9))
    np.testing.assert_array_equal(cohort.rois["source_index"], order)
    np.testing.assert_array_equal(cohort.rois["index"], np.arange(9))
    np.testing.assert_array_equal(cohort.bold(cohort.scans[0]), bold[order])
    np.testing.assert_array_equal(cohort.sc("s1"), sc[np.ix_(order, order)])
    assert cohort.rois["name"].tolist() == [f"roi{i}" for i in order]
    assert cohort.rois["network"].tolist() == [f"net{i // 3}" for i in order]
    assert "shuffled (seed 4)" in cohort.summary()


def test_shuffled_order_is_fixed_by_its_seed(tmp_path):
    first = _write(tmp_path / "a", "shuffled", seed=1)[0].manifest["roi_order"]
    again = _write(tmp_path / "b", "shuffled", seed=1)[0].manifest["roi_order"]
    other = _write(tmp_path / "c", "shuffled", seed=2)[0].manifest["roi_order"]
    assert first == again
    assert first["source_index"] != other["source_index"]


def test_original_order_is_the_identity(tmp_path):
    cohort, bold, _ = _write(tmp_path / "plain", "original")
    assert cohort.manifest["roi_order"]["source_index"] == list(range(9))
    np.testing.assert_array_equal(cohort.bold(cohort.scans[0]), bold)
    assert "ROI order     original" in cohort.summary()


def test_unknown_roi_order_is_refused(tmp_path):
    with pytest.raises(ValueError, match="roi_order must be one of"):
        CohortWriter(tmp_path / "x", source={"name": "toy"}, atlas="toy", roi_order="sorted")


def test_simulate_command_shuffles_networks_out_of_index_order(tmp_path, capsys):
    from bsym.cli import main

    out = tmp_path / "sim"
    main(["data", "simulate", "--out", str(out), "--subjects", "4", "--rois", "21",
          "--timepoints", "60", "--networks", "3", "--sites", "1", "--sessions", "1",
          "--roi-order", "shuffled", "--roi-seed", "7", "--quiet"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["roi_order"]["order"] == "shuffled" and manifest["roi_order"]["seed"] == 7
    networks = open_cohort(out).rois["network"].tolist()
    # the simulator numbers ROIs network by network; shuffled, neighbours rarely share one
    same_as_next = np.mean([a == b for a, b in zip(networks, networks[1:])])
    assert same_as_next < 0.6
