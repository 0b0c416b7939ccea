"""Nothing of the user's is lost: every command that writes, pointed at a folder or a file
of the user's, with every flag that asks it to replace or refresh its output, refuses with
one line naming the path and leaves every byte as it was.

One small world (a store, a pretraining run, its embeddings, a split file, a result table)
is made once for the module; each case puts the user's things where one output goes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bsym.cli import main
from bsym.io import file_sha256
from bsym.testing import write_toy_store

torch.set_num_threads(1)

SPACE = json.dumps({"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})


def _run(argv):
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("survive")
    w = {"root": root}
    w["store"] = write_toy_store(root / "store", n_subjects=12, n_rois=8, sessions=2,
                                 n_timepoints=40).path
    w["folder"] = root / "byod"
    (w["folder"] / "func").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["subject\ttr\tage"]
    for i in range(3):
        np.save(w["folder"] / "func" / f"sub-0{i}.npy", rng.standard_normal((6, 40)))
        lines.append(f"sub-0{i}\t2.0\t{30 + i}")
    (w["folder"] / "participants.tsv").write_text("\n".join(lines) + "\n")
    w["run"] = root / "run"
    assert _run(["pretrain", "--model", "brainlm", "--window", "20", "--steps", "2",
                 "--batch-size", "4", "--warmup-steps", "0", "--data", w["store"], "--out",
                 w["run"], "--no-tracking", "--quiet", "--device", "cpu"]) == 0
    w["emb"] = root / "emb.npz"
    assert _run(["embed", "--checkpoint", w["run"] / "final.pt", "--data", w["store"],
                 "--out", w["emb"], "--quiet"]) == 0
    w["splits"] = root / "sex.json"
    assert _run(["splits", "--data", w["store"], "--task", "sex", "--splits", w["splits"],
                 "--n-folds", "3", "--inner-folds", "2"]) == 0
    w["results"] = root / "results.parquet"
    assert _run(["probe", "--features", "fc", "--data", w["store"], "--task", "sex",
                 "--splits", w["splits"], "--results", w["results"], "--no-tracking",
                 "--quiet"]) == 0
    return w


# Each command: (argv with OUT where the user's thing goes, the replace flags to try).
COMMANDS = {
    "data simulate": (lambda w: ["data", "simulate", "--subjects", "4", "--rois", "8",
                                 "--networks", "2", "--timepoints", "60", "--sessions", "1",
                                 "--quiet", "--out", "OUT"], ["--overwrite"]),
    "data import folder": (lambda w: ["data", "import", "folder", w["folder"], "--quiet",
                                      "--out", "OUT"], ["--overwrite"]),
    "pretrain": (lambda w: ["pretrain", "--model", "brainlm", "--window", "20", "--steps", "2",
                            "--batch-size", "4", "--data", w["store"], "--no-tracking",
                            "--quiet", "--device", "cpu", "--out", "OUT"], ["--resume"]),
    "embed": (lambda w: ["embed", "--checkpoint", w["run"] / "final.pt", "--data", w["store"],
                         "--quiet", "--out", "OUT"], ["--force"]),
    "embed --run": (lambda w: ["embed", "--run", w["run"], "--data", w["store"], "--quiet",
                               "--out", "OUT"], ["--force"]),
    "probe": (lambda w: ["probe", "--embeddings", w["emb"], "--data", w["store"], "--task",
                         "sex", "--splits", w["splits"], "--no-tracking", "--quiet",
                         "--results", "OUT"], ["--force"]),
    "netid --results": (lambda w: ["netid", "--embeddings", w["emb"], "--data", w["store"],
                                   "--quiet", "--results", "OUT"], ["--force"]),
    "netid --figure": (lambda w: ["netid", "--embeddings", w["emb"], "--data", w["store"],
                                  "--quiet", "--figure", "OUT"], ["--force"]),
    "health --out": (lambda w: ["health", "--checkpoint", w["run"] / "final.pt", "--data",
                                w["store"], "--allow-pretrained-subjects", "--no-tracking",
                                "--quiet", "--out", "OUT"], []),
    "health --figure": (lambda w: ["health", "--checkpoint", w["run"] / "final.pt", "--data",
                                   w["store"], "--allow-pretrained-subjects", "--no-tracking",
                                   "--quiet", "--out", w["root"] / "unused" / "h.parquet",
                                   "--figure", "OUT"], []),
    "splits": (lambda w: ["splits", "--data", w["store"], "--task", "age", "--splits", "OUT"],
               []),
    "sweep --out": (lambda w: ["sweep", "--model", "bnt", "--data", w["store"], "--task", "sex",
                               "--splits", w["splits"], "--space", SPACE, "--trials", "1",
                               "--storage", w["root"] / "unused" / "s.journal",
                               "--no-tracking", "--quiet", "--out", "OUT"], []),
    "sweep --storage": (lambda w: ["sweep", "--model", "bnt", "--data", w["store"], "--task",
                                   "sex", "--splits", w["splits"], "--space", SPACE, "--trials",
                                   "1", "--out", w["root"] / "unused" / "best.json",
                                   "--no-tracking", "--quiet", "--storage", "OUT"], []),
    "stats": (lambda w: ["stats", w["results"], "--metric", "auroc", "--out", "OUT"], []),
    "leaderboard": (lambda w: ["leaderboard", w["results"], "--csv", "OUT"], []),
    "report": (lambda w: ["report", "--results", w["results"], "--out", "OUT"], []),
    "tracking init": (lambda w: ["tracking", "init", "--out", "OUT"], []),
    "tracking leaderboard": (lambda w: ["tracking", "leaderboard", "--results", w["results"],
                                        "--report-dir", w["root"] / "unused" / "report",
                                        "--out", "OUT"], []),
}


def _user_folder(path):
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    np.save(path / "data.npy", np.arange(10.0))
    (path / "sub" / "final.pt").write_bytes(b"not a checkpoint")
    return path


def _user_file(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("my own file\n")
    return path


def _snapshot(root):
    return {str(p): ("dir" if p.is_dir() else file_sha256(p)) for p in sorted(root.rglob("*"))}


def _argv(name, w, target):
    argv = [str(target) if a == "OUT" else a for a in COMMANDS[name][0](w)]
    if name.startswith("tracking"):  # the store goes into the case folder, not the user's
        argv = [*argv[:2], "--tracking-uri", f"sqlite:///{target.parent / 'mlflow.db'}",
                *argv[2:]]
    return argv


@pytest.mark.parametrize("kind", ["folder", "file"])
@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_users_things_survive_every_command(world, tmp_path, capsys, name, kind):
    target = tmp_path / "mine"
    _user_folder(target) if kind == "folder" else _user_file(target)
    before = _snapshot(tmp_path)
    for flags in ([], *[[flag] for flag in COMMANDS[name][1]]):
        code = _run([*_argv(name, world, target), *flags])
        err = capsys.readouterr().err
        assert code == 2, (flags, err)
        assert str(target) in err and "Fix:" in err, (flags, err)
        assert len(err.strip().splitlines()) == 1, err
        after = {p: h for p, h in _snapshot(tmp_path).items() if not p.endswith("mlflow.db")}
        assert after == before, (flags, err)
    assert not (world["root"] / "unused").exists()

