"""``bsym.train.pretrain``: the library function behind ``bsym pretrain``."""

from __future__ import annotations

import json

import pytest
import torch
from toy_models import make_model  # noqa: F401 - registers the "toy-mae" model

from bsym.cli import build_parser, main
from bsym.errors import UsageError
from bsym.train import TrainConfig, pretrain
from bsym.train.checkpoint import load_checkpoint
from bsym.train.cli import _train_config

torch.set_num_threads(1)

SETTINGS = {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "device": "cpu",
            "progress": False}
FLAGS = ["--steps", "4", "--batch-size", "4", "--checkpoint-every", "2", "--device", "cpu",
         "--quiet", "--no-tracking"]


@pytest.fixture
def subject_files(tmp_path):
    subjects, val = tmp_path / "subjects.txt", tmp_path / "val.txt"
    subjects.write_text("sub-00\nsub-01\nsub-02\nsub-03\n")
    val.write_text("sub-05\n")
    return subjects, val


def test_pretrain_writes_the_checkpoint_the_command_line_writes(toy_store, subject_files,
                                                                 tmp_path, capsys):
    subjects, val = subject_files
    assert main(["pretrain", "--model", "toy-mae", "--preset", "staged", "--window", "20",
                 "--data", str(toy_store.path), "--out", str(tmp_path / "cli"),
                 "--subjects-file", str(subjects), "--val-subjects-file", str(val),
                 *FLAGS]) == 0
    config = TrainConfig(**SETTINGS)
    result = pretrain("toy-mae", toy_store.path, tmp_path / "lib", preset="staged", window=20,
                      config=config, subjects_file=subjects, val_subjects_file=val)
    assert config == TrainConfig(**SETTINGS)  # the caller's settings are left as they were

    cli = load_checkpoint(tmp_path / "cli" / "final.pt")
    lib = load_checkpoint(result.final_path)
    assert lib.keys() == cli.keys()
    for key in sorted(set(cli) - {"state_dict", "wall_s", "budget"}):
        assert lib[key] == cli[key], key
    budget = {k: v for k, v in lib["budget"].items() if k != "wall_s"}
    assert budget == {k: v for k, v in cli["budget"].items() if k != "wall_s"}
    for name, value in cli["state_dict"].items():
        assert torch.equal(lib["state_dict"][name], value), name
    # what the scaler of embeddings and the pretraining-subject guard of the probes read
    extra = lib["extra"]
    assert extra["train_subjects"] == ["sub-00", "sub-01", "sub-02", "sub-03"]
    assert extra["data_path"] == str(toy_store.path.resolve())
    assert extra["subjects_file"] == str(subjects) and extra["val_subjects_file"] == str(val)
    assert extra["n_train_scans"] == 4 and extra["n_val_scans"] == 1
    assert extra["scaler"]["n_scans"] == 4 and extra["budget_request"] is None
    records = [json.loads((tmp_path / run / "run.json").read_text()) for run in ("cli", "lib")]
    assert records[0]["extra"] == records[1]["extra"]


def test_a_budget_sets_the_steps(toy_store, tmp_path):
    config = TrainConfig(**SETTINGS)
    result = pretrain("toy-mae", toy_store.path, tmp_path / "run", window=20, config=config,
                      budget=("timepoints", 200))
    assert result.steps == 3  # 200 points / (4 windows x 20 points), rounded up
    assert load_checkpoint(result.final_path)["extra"]["budget_request"] == {
        "unit": "timepoints", "amount": 200.0, "steps": 3}
    assert config.steps == 4


def test_pretrain_refuses_unknown_models_presets_and_shared_subjects(toy_store, subject_files,
                                                                    tmp_path):
    subjects, _ = subject_files
    with pytest.raises(UsageError, match="unknown model 'nosuchmodel'"):
        pretrain("nosuchmodel", toy_store.path, tmp_path / "a")
    with pytest.raises(UsageError, match="has no preset 'huge'; presets: staged, tiny"):
        pretrain("toy-mae", toy_store.path, tmp_path / "b", preset="huge")
    with pytest.raises(UsageError, match="share subjects"):
        pretrain("toy-mae", toy_store.path, tmp_path / "c", subjects_file=subjects,
                 val_subjects_file=subjects)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_the_command_line_defaults_are_the_train_config_defaults():
    args = build_parser().parse_args(["pretrain", "--model", "m", "--data", "d", "--out", "o"])
    assert _train_config(args) == TrainConfig()
