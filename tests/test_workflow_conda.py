"""`snakemake --use-conda` through Snakemake's own conda code, with a conda stand-in.

There is no conda on the test machines and a test may not download packages, so a small
shim (tests/conda_shim/) plays the conda command line: everything on Snakemake's side is
real (the environment hash and folder under .snakemake/conda, the copy of the environment
file, the checks of the conda installation, the `env create` call, the done flag, the
`source .../activate ENV; ...` prefix of every job, the PYTHONPATH blocking), and the
shim's one honest fake is the install itself: the environment it creates holds a
`bin/python` that runs the test's interpreter, whose installed packages stand in for the
solved environment. It still checks the environment file's python pin against that
interpreter, and refuses commands it does not know.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIM = Path(__file__).resolve().parent / "conda_shim"
ENV_FILE = ROOT / "workflow/envs/bsym.yaml"
TARGET = "results/test/data/tiny.summary.txt"


def install_conda_shim(base):
    """A fake conda base folder: BASE/bin/conda (launcher) and BASE/bin/activate."""
    bin_dir = base / "bin"
    bin_dir.mkdir(parents=True)
    launcher = bin_dir / "conda"
    launcher.write_text(
        "#!/bin/sh\n"
        f"BSYM_CONDA_SHIM_ROOT={shlex.quote(str(base))} exec {shlex.quote(sys.executable)} "
        f'{shlex.quote(str(SHIM / "conda.py"))} "$@"\n')
    launcher.chmod(0o755)
    log = base / "calls.log"
    (bin_dir / "activate").write_text((SHIM / "activate").read_text().replace("@LOG@", str(log)))
    return log


def shim_env(base):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONDA_", "_CONDA", "MAMBA"))}
    # Snakemake must drop this in conda jobs; the rules put the checkout there themselves
    env["PYTHONPATH"] = "/nonexistent/outer-pythonpath"
    env["PATH"] = f"{base / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    assert shutil.which("conda", path=env["PATH"]) == str(base / "bin/conda")
    return env


def snakemake(args, cwd, env):
    # targets first: --configfile takes every word after it
    cmd = [sys.executable, "-m", "snakemake", *args, "-s", str(ROOT / "Snakefile"),
           "--use-conda", "--conda-frontend", "conda", "--cores", "1",
           "--configfile", str(ROOT / "workflow/config/test.yaml")]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def read_log(log):
    return [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []


def test_use_conda_creates_the_env_from_bsym_yaml_and_runs_jobs_inside_it(tmp_path):
    base = tmp_path / "conda-base"
    log = install_conda_shim(base)
    env = shim_env(base)
    work = tmp_path / "work"
    work.mkdir()

    first = snakemake([TARGET], work, env)
    text = first.stdout + first.stderr
    assert first.returncode == 0, text[-4000:] + "\n" + "\n".join(map(str, read_log(log)))
    calls = read_log(log)
    assert not [c for c in calls if c[0] == "error"], calls

    # Snakemake checked the installation, then created exactly one environment: from a
    # copy of workflow/envs/bsym.yaml, in its hashed folder under .snakemake/conda
    conda = [shlex.split(c[1]) for c in calls if c[0] == "conda"]
    assert ["info", "--json"] in conda and ["--version"] in conda
    assert ["config", "--get", "channel_priority", "--json"] in conda
    creates = [c for c in conda if c[:2] == ["env", "create"]]
    assert len(creates) == 1, conda
    create = creates[0]
    prefix = Path(create[create.index("--prefix") + 1])
    copied = Path(create[create.index("--file") + 1])
    assert prefix.parent == work / ".snakemake/conda"
    assert copied == prefix.with_name(prefix.name + ".yaml")
    assert copied.read_bytes() == ENV_FILE.read_bytes()
    assert re.search(r"Creating conda environment \S*workflow/\S*envs/bsym\.yaml", text)
    assert ["clean", "-y", "--tarballs"] in conda
    assert (prefix / "bin/python").exists()
    assert prefix.with_suffix(".env_setup_done").exists()

    # both jobs (prepare_dataset, validate_dataset) were activated in that environment,
    # and their `python` was its python, with CONDA_PREFIX pointing at it and bsym taken
    # from this checkout (the caller's PYTHONPATH blocked, common.smk's prefix in place)
    activations = [c[1] for c in calls if c[0] == "activate"]
    assert activations == [str(prefix)] * 2, activations
    pythons = [c for c in calls if c[0] == "python"]
    assert len(pythons) >= 3, pythons  # simulate; validate and info
    for _, executable, conda_prefix, pythonpath, args in pythons:
        assert executable == str(prefix / "bin/python")
        assert conda_prefix == str(prefix)
        assert pythonpath == str(ROOT)
        assert args.startswith("-m bsym data "), args
    assert {p[4].split()[3] for p in pythons} == {"simulate", "validate", "info"}

    summary = work / TARGET
    assert "subjects      24  scans 48  ROIs 16" in summary.read_text()

    # a second run reuses the environment (its done flag) and has nothing to do
    again = snakemake([TARGET], work, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing to be done" in again.stdout + again.stderr
    later = [shlex.split(c[1]) for c in read_log(log)[len(calls):] if c[0] == "conda"]
    assert not [c for c in later if "create" in c], later


def test_conda_shim_refuses_what_it_cannot_honestly_fake(tmp_path):
    base = tmp_path / "conda-base"
    log = install_conda_shim(base)
    unknown = subprocess.run(["conda", "run", "-p", str(tmp_path), "python"], env=shim_env(base),
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode != 0 and "unsupported command: conda run" in unknown.stderr
    env_file = tmp_path / "old.yaml"
    env_file.write_text("channels: [conda-forge]\ndependencies:\n  - python >=2.7,<3\n")
    proc = subprocess.run(
        ["conda", "env", "create", "--quiet", "--file", str(env_file), "--prefix",
         str(tmp_path / "env")], env=shim_env(base), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "python >=2.7,<3" in proc.stderr
    assert not (tmp_path / "env").exists()
    assert read_log(log)[-1][0] == "error"
