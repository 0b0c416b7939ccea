"""A stand-in for the ``conda`` command: just what Snakemake 9's ``--use-conda`` path calls.

tests/test_workflow_conda.py installs it into a fake conda base folder (``ROOT/bin/conda``,
a launcher that runs this file with the test's interpreter, and ``ROOT/bin/activate``) and
puts ``ROOT/bin`` first on PATH. Snakemake (``snakemake/deployment/conda.py``) then runs,
through its shell:

* ``type conda``: finds the launcher;
* ``conda info --json``: reads ``conda_prefix`` (where ``bin/activate`` lives) and
  ``platform`` (which names the optional ``<env>.<platform>.pin.txt`` file);
* ``conda --version``: must be at least Snakemake's minimum (24.7.1);
* ``conda config --get channel_priority --json``: "strict", or Snakemake warns;
* ``conda env create --quiet --no-default-packages --file ENV.yaml --prefix ENV``: here the
  shim reads the environment file, checks that the interpreter it will hand out satisfies
  the file's ``python`` requirement, and "installs" by writing ``ENV/bin/python``, a
  wrapper that logs its call (path, CONDA_PREFIX, PYTHONPATH, first arguments) and runs
  that interpreter, whose packages stand in for the solved environment (no package is
  downloaded, nothing touches the network);
* ``conda clean -y --tarballs``: after each creation (a no-op here: nothing is cached);
* per job: ``source ROOT/bin/activate 'ENV'; <the rule's command>`` (see ``activate``).

Every call is appended to ``ROOT/calls.log`` (one tab-separated line each) so a test can
check what Snakemake asked for. Any other command fails loudly, so a Snakemake that starts
to need more shows up as a failing test rather than a silently wrong fake.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

VERSION = "24.11.3"
PLATFORM = "linux-64"
ROOT = Path(os.environ["BSYM_CONDA_SHIM_ROOT"])
LOG = ROOT / "calls.log"

PYTHON_WRAPPER = """#!/bin/sh
# python of an environment made by the conda shim (tests/conda_shim/conda.py)
printf 'python\\t%s\\t%s\\t%s\\t%s\\n' "$0" "${{CONDA_PREFIX:-}}" "${{PYTHONPATH:-}}" "$1 $2 $3 $4" \\
    >> {log}
exec {python} "$@"
"""


def log(kind, *fields):
    with open(LOG, "a") as out:
        out.write("\t".join([kind, *fields]) + "\n")


def fail(message, code=2):
    print(f"conda (bsym test shim): {message}", file=sys.stderr)
    log("error", message)
    sys.exit(code)


def option(argv, name):
    """Value of ``--name VALUE`` or ``--name=VALUE``; None when absent."""
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def check_python(spec_lines):
    """Fail unless the interpreter the environment gets meets the file's python pin."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    for line in spec_lines:
        if not isinstance(line, str):
            continue  # a nested pip: section
        name, _, spec = line.partition(" ")
        if name.split("::")[-1] != "python":
            continue
        try:
            wanted = SpecifierSet(spec.replace(" ", ""))
        except InvalidSpecifier:
            fail(f"cannot read the python requirement {line!r}")
        have = ".".join(map(str, sys.version_info[:3]))
        if have not in wanted:
            fail(f"the environment wants {line!r}; this shim only offers Python {have}", 1)


def create(argv):
    import yaml

    env_file, prefix = option(argv, "--file"), option(argv, "--prefix")
    if not env_file or not prefix:
        fail(f"create needs --file and --prefix: {shlex.join(argv)}")
    if not env_file.endswith((".yaml", ".yml")):
        fail(f"only environment YAML files are supported, not {env_file}")
    spec = yaml.safe_load(Path(env_file).read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("dependencies"), list):
        fail(f"{env_file} is not a conda environment file (no dependencies list)", 1)
    check_python(spec["dependencies"])

    prefix = Path(prefix)
    if prefix.exists():
        fail(f"prefix already exists: {prefix}", 1)
    (prefix / "bin").mkdir(parents=True)
    (prefix / "conda-meta").mkdir()
    wrapper = prefix / "bin/python"
    wrapper.write_text(PYTHON_WRAPPER.format(log=shlex.quote(str(LOG)),
                                             python=shlex.quote(sys.executable)))
    wrapper.chmod(0o755)
    (prefix / "bin/python3").symlink_to("python")
    (prefix / "conda-meta/history").write_text(
        f"# cmd: conda {shlex.join(argv)}\n"
        + "".join(f"# spec: {d}\n" for d in spec["dependencies"] if isinstance(d, str)))
    print(f"conda (bsym test shim): environment {prefix} from {env_file}")


def main(argv):
    log("conda", shlex.join(argv))
    if argv in (["--version"], ["-V"]):
        print(f"conda {VERSION}")
    elif argv[:1] == ["info"] and "--json" in argv:
        print(json.dumps({
            "conda_version": VERSION, "platform": PLATFORM, "conda_prefix": str(ROOT),
            "root_prefix": str(ROOT), "envs_dirs": [str(ROOT / "envs")], "channels": [],
        }))
    elif argv[:3] == ["config", "--get", "channel_priority"] and "--json" in argv:
        print(json.dumps({"get": {"channel_priority": "strict"}, "rc_path": None}))
    elif argv[:2] == ["env", "create"] or argv[:1] == ["create"]:
        create(argv)
    elif argv[:1] == ["clean"] and "-y" in argv and "--tarballs" in argv:
        pass  # nothing was downloaded, so there is no package cache to clean
    else:
        fail(f"unsupported command: conda {shlex.join(argv)}")


if __name__ == "__main__":
    main(sys.argv[1:])
