"""Subjects an encoder was pretrained on are never probed or fine-tuned on by accident."""

from __future__ import annotations

from bsym.cli import main


def test_probe_and_finetune_refuse_the_pretraining_cohort(toy_store_factory, tmp_path, capsys):
    store = toy_store_factory(n_subjects=12, n_rois=8, n_timepoints=64)
    data = ["--data", str(store.path)]
    assert main(["splits", *data, "--pretrain-fraction", "0.5", "--splits",
                 str(tmp_path / "pretrain.json"), "--subjects-out",
                 str(tmp_path / "pretrain.txt")]) == 0
    assert main(["pretrain", "--model", "brainsymphony", *data, "--out", str(tmp_path / "run"),
                 "--subjects-file", str(tmp_path / "pretrain.txt"), "--steps", "2",
                 "--batch-size", "4", "--window", "16", "--device", "cpu", "--no-tracking",
                 "--quiet"]) == 0
    checkpoint = str(tmp_path / "run/final.pt")
    assert main(["embed", "--checkpoint", checkpoint, *data, "--out",
                 str(tmp_path / "emb.npz"), "--quiet"]) == 0
    capsys.readouterr()
    probe = ["probe", "--embeddings", str(tmp_path / "emb.npz"), *data, "--task", "age",
             "--n-folds", "2", "--inner-folds", "2", "--no-tracking", "--quiet"]
    every = ["--splits", str(tmp_path / "every.json"), "--results", str(tmp_path / "a.parquet")]

    assert main([*probe, *every]) == 2
    err = capsys.readouterr().err
    assert "pretraining cohort" in err and "--pretrain-split" in err
    assert not (tmp_path / "a.parquet").exists()
    assert main(["finetune", "--checkpoint", checkpoint, *data, "--task", "age", *every,
                 "--max-steps", "2", "--no-tracking", "--quiet"]) == 2
    assert "pretraining cohort" in capsys.readouterr().err

    # knowingly, or on the held-out subjects
    assert main([*probe, *every, "--allow-pretrained-subjects"]) == 0
    assert main([*probe, "--splits", str(tmp_path / "held.json"), "--pretrain-split",
                 str(tmp_path / "pretrain.json"), "--results", str(tmp_path / "b.parquet")]) == 0
