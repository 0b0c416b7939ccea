"""environment.yml and pyproject.toml must name the same packages at the same versions."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch", "torch-geometric": "pytorch_geometric"}


def _pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["test"]
    return {CONDA_NAMES.get(r.name, r.name): r.specifier for r in map(Requirement, lines)}


def _conda_requirements(path="environment.yml"):
    env = yaml.safe_load((ROOT / path).read_text())
    found = {}
    for entry in env["dependencies"]:
        if isinstance(entry, str) and entry not in ("pip",) and not entry.startswith("python "):
            name, _, spec = entry.partition(" ")
            found[name] = SpecifierSet(spec.replace(" ", ""))
    return found


def test_environment_yml_matches_pyproject():
    assert _conda_requirements() == _pyproject_requirements()


def test_torch_range_admits_the_cpu_wheel():
    assert "2.13.0" in _pyproject_requirements()["pytorch"]


def test_workflow_environment_matches_environment_yml():
    assert _conda_requirements("workflow/envs/bsym.yaml") == _conda_requirements()
