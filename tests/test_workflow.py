"""The Snakemake workflow, run for real on the small test configuration."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bsym.data import open_cohort

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]


def _run(args, cwd):
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_test_config_runs_validates_and_is_then_a_no_op(tmp_path):
    config = ["--configfile", str(ROOT / "workflow/config/test.yaml")]
    first = _run(["--cores", "2", *config], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = tmp_path / "results/test/data/tiny.summary.txt"
    assert "subjects      12  scans 24  ROIs 16" in summary.read_text()
    open_cohort(tmp_path / "results/test/data/tiny", verify=True)
    assert (tmp_path / "results/test/logs/prepare_dataset/tiny.log").exists()
    assert (tmp_path / "results/test/benchmarks/rules/prepare_dataset/tiny.tsv").exists()
    second = _run(["--cores", "2", *config], tmp_path)
    assert second.returncode == 0
    assert "Nothing to be done" in second.stdout + second.stderr


def test_lint_is_clean():
    if shutil.which("snakemake") is None and not (Path(sys.executable).parent / "snakemake").exists():
        pytest.skip("snakemake not installed")
    proc = _run(["--lint"], ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bad_config_names_the_key_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets:\n  x:\n    source: nowhere\n")
    proc = _run(["--cores", "1", "--configfile", str(bad), "-n"], tmp_path)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "nowhere" in text and "source" in text
    assert not (tmp_path / "results").exists()
