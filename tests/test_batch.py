"""``bsym batch``: several commands in one process, each as if it ran alone."""

from __future__ import annotations

import os
import random
import shlex

import numpy as np
import pandas as pd
import pytest
import torch

from bsym.batch import fresh_process_state, read_commands
from bsym.cli import main
from bsym.evaluate.results import ResultTable
from bsym.testing import write_toy_store

#: Columns that record when and how long, not what.
WALL_TIME = ["runtime_s", "created"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_toy_store(tmp_path_factory.mktemp("toy") / "toy", n_subjects=20, sessions=2,
                           n_timepoints=40)


def probe(store, folder, task):
    """A connectome probe of one task (with its shuffled-labels control)."""
    return (f"probe --features fc --data {store.path} --task {task} --splits "
            f"{folder / task}.json --n-folds 4 --inner-folds 2 --permutations 2 "
            f"--results {folder / task}.parquet --no-tracking --quiet")


def supervised(store, folder, task):
    """A few steps of BNT on one task, on two folds."""
    return (f"supervised --model bnt --model-arg heads=2 --data {store.path} --task {task} "
            f"--splits {folder / task}.json --n-folds 4 --inner-folds 2 --fold 0 --fold 1 "
            f"--window 20 --max-steps 4 --eval-every 2 --batch-size 8 "
            f"--results {folder / task}_bnt.parquet --no-tracking --quiet")


def table(path):
    return ResultTable(path).read().drop(columns=WALL_TIME)


def test_a_batch_writes_what_the_commands_write_alone(store, tmp_path):
    alone, batched = tmp_path / "alone", tmp_path / "batched"
    alone.mkdir(), batched.mkdir()
    builders = [(probe, "sex"), (supervised, "sex"), (probe, "age")]
    for build, task in builders:
        assert main(shlex.split(build(store, alone, task))) == 0
    args = [word for build, task in builders
            for word in ("--command", build(store, batched, task))]
    assert main(["batch", *args]) == 0
    for name in ("sex.parquet", "sex_bnt.parquet", "age.parquet"):
        pd.testing.assert_frame_equal(table(alone / name), table(batched / name),
                                      check_exact=True)


def test_a_batch_stops_at_the_first_failure_and_names_it(store, tmp_path, capsys):
    lines = [probe(store, tmp_path, "sex"), probe(store, tmp_path, "iq"),
             probe(store, tmp_path, "age")]
    assert main(["batch", *(w for line in lines for w in ("--command", line))]) == 2
    err = capsys.readouterr().err
    assert "no label column 'iq'" in err  # the command's own message
    assert "command 2 of 3 failed with exit status 2, the later 1 not run" in err
    assert (tmp_path / "sex.parquet").exists() and not (tmp_path / "age.parquet").exists()


def test_every_command_parses_before_the_first_runs(store, tmp_path, capsys):
    lines = [probe(store, tmp_path, "sex"), f"{probe(store, tmp_path, 'age')} --no-such-option"]
    assert main(["batch", "--command", lines[0], "--command", lines[1]]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --no-such-option" in err
    assert f"command 2 of 2 ({lines[1]!r}) does not parse" in err
    assert not (tmp_path / "sex.parquet").exists()


@pytest.mark.parametrize("line, words", [
    ("batch --command 'data info'", "a batch cannot run a batch"),
    ("probe --task 'sex", "No closing quotation"),
])
def test_nested_batches_and_bad_quoting_are_refused(line, words, capsys):
    assert main(["batch", "--command", line]) == 2
    assert words in capsys.readouterr().err


def test_a_commands_file_skips_blank_and_comment_lines(store, tmp_path, capsys):
    path = tmp_path / "commands.txt"
    path.write_text(f"# connectome probes\n\n{probe(store, tmp_path, 'sex')}\n"
                    f"  {probe(store, tmp_path, 'age')}  \n")
    assert read_commands(path) == [probe(store, tmp_path, "sex"), probe(store, tmp_path, "age")]
    assert main(["batch", "--commands-file", str(path)]) == 0
    assert "command 2 of 2: probe --features fc" in capsys.readouterr().err
    assert (tmp_path / "age.parquet").exists()
    path.write_text("# nothing\n")
    assert main(["batch", "--commands-file", str(path)]) == 2
    assert "no command given" in capsys.readouterr().err
    assert main(["batch", "--commands-file", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt: no such file" in capsys.readouterr().err


def test_a_batch_takes_commands_or_a_file_not_both(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["batch", "--command", "data info x", "--commands-file", str(tmp_path / "f")])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_each_command_starts_from_a_fresh_process_state(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = {"threads": torch.get_num_threads(),
              "deterministic": torch.are_deterministic_algorithms_enabled(),
              "benchmark": torch.backends.cudnn.benchmark}
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    seeded = (random.random(), np.random.random(), torch.rand(1).item())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    with fresh_process_state():
        # reseeded from fresh entropy, as a new process is
        assert (random.random(), np.random.random(), torch.rand(1).item()) != seeded
        torch.set_num_threads(before["threads"] + 1)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = True
        os.environ["BSYM_BATCH_TEST"] = "1"
        os.chdir(tmp_path.parent)
        import warnings
        warnings.simplefilter("error")
    assert {"threads": torch.get_num_threads(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "benchmark": torch.backends.cudnn.benchmark} == before
    assert "BSYM_BATCH_TEST" not in os.environ and os.getcwd() == str(tmp_path)
    import warnings
    assert ("error", None, Warning, None, 0) not in warnings.filters


def test_an_unexpected_error_names_the_command(monkeypatch, tmp_path):
    import bsym.evaluate.cli as evaluate_cli

    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(evaluate_cli, "_probe", broken)
    line = f"probe --features fc --data {tmp_path} --task sex --splits s.json --no-tracking"
    with pytest.raises(RuntimeError, match="boom") as info:
        main(["batch", "--command", line])
    assert f"bsym batch: raised by command 1 of 1: {line}" in info.value.__notes__


@pytest.mark.parametrize("code, status", [(3, 3), ("message", 1), (None, 0), (0, 0)])
def test_a_command_that_exits_ends_the_batch_with_its_status(monkeypatch, tmp_path, code,
                                                             status, capsys):
    import bsym.evaluate.cli as evaluate_cli

    def exits(args):
        raise SystemExit(code)

    monkeypatch.setattr(evaluate_cli, "_probe", exits)
    line = f"probe --features fc --data {tmp_path} --task sex --splits s.json --no-tracking"
    assert main(["batch", "--command", line, "--command", line]) == status
    err = capsys.readouterr().err
    assert ("command 2 of 2: probe" in err) == (status == 0)
    assert ("message" in err) == (code == "message")
