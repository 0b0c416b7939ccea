"""The model registry, entry-point plugins, and ``bsym models``."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest
import torch

import bsym.models.registry as registry
from bsym.cli import main
from bsym.models import BrainModel, Embeddings, ModelSpec, available, build, get_spec, register


@pytest.fixture
def isolated_registry(monkeypatch):
    """Registrations made by a test vanish with it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_BROKEN", {})


def test_builtin_models_are_available():
    assert "brainsymphony" in available()
    spec = get_spec("brainsymphony")
    assert {"tiny", "paper"} <= set(spec.presets) and spec.description


def test_unknown_names_list_the_known_ones():
    with pytest.raises(KeyError, match="unknown model 'nope'; known models: .*brainsymphony"):
        build("nope")
    with pytest.raises(KeyError, match="no preset 'huge'; presets: paper, tiny"):
        build("brainsymphony", preset="huge")


def test_presets_and_overrides():
    model = build("brainsymphony", n_rois=10, n_timepoints=20, branches="fmri")
    assert model.name == "brainsymphony" and model.preset == "tiny"
    assert model.config == {**get_spec("brainsymphony").presets["tiny"], "n_rois": 10,
                            "n_timepoints": 20, "branches": "fmri"}
    assert model.perceiver.latents.shape == (10, 32)
    with pytest.raises(TypeError, match="no argument.*n_roi\\b.*accepts: n_rois"):
        build("brainsymphony", n_roi=10)


def test_register_rejects_duplicates_and_missing_tiny(isolated_registry):
    spec = ModelSpec(name="dup", factory=object, presets={"tiny": {}})
    register(spec)
    register(spec)  # the same spec again is fine
    with pytest.raises(ValueError, match="already registered"):
        register(ModelSpec(name="dup", factory=dict, presets={"tiny": {}}))
    with pytest.raises(ValueError, match="needs a 'tiny' preset"):
        register(ModelSpec(name="big", factory=object, presets={"paper": {}}))


PLUGIN = '''
"""A lab's own model, packaged outside bsym."""
import torch
from torch import nn

from bsym.models import BrainModel, Embeddings, ModelSpec


class MeanAutoencoder(BrainModel):
    def __init__(self, n_rois=6, n_timepoints=10, width=4):
        super().__init__()
        self.n_rois, self.n_timepoints = n_rois, n_timepoints
        self.encode = nn.Linear(n_timepoints, width)
        self.decode = nn.Linear(width, n_timepoints)

    def embed(self, batch):
        roi = self.encode(batch["bold"])
        return Embeddings(subject=roi.mean(dim=1), roi=roi)

    def pretrain_loss(self, batch, *, generator=None, stage=None):
        x = batch["bold"]
        return ((self.decode(self.encode(x)) - x) ** 2).mean()


spec = ModelSpec(name="lab-ae", factory=MeanAutoencoder, description="a plugin model",
                 presets={"tiny": {"width": 4}, "wide": {"width": 16}})
'''


def write_plugin(root, name="lab_models", entry="lab-ae = lab_models.model:spec"):
    """An installed-looking package: sources plus the *.dist-info importlib.metadata reads."""
    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text(PLUGIN)
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [project]
        name = "{name.replace('_', '-')}"
        version = "0.1"
        [project.entry-points."bsym.models"]
        {entry}
        """))
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[bsym.models]\n{entry}\n")
    return root


def test_plugin_package_builds_and_runs_like_a_builtin(tmp_path, monkeypatch, isolated_registry):
    monkeypatch.syspath_prepend(str(write_plugin(tmp_path / "site")))
    importlib.invalidate_caches()
    assert "lab-ae" in available() and "brainsymphony" in available()
    model = build("lab-ae", preset="wide", n_timepoints=12)
    assert isinstance(model, BrainModel) and model.config == {"width": 16, "n_timepoints": 12}
    batch = {"bold": torch.randn(3, 6, 12)}
    emb = model.embed(batch)
    assert isinstance(emb, Embeddings) and emb.roi.shape == (3, 6, 16)
    loss = model.pretrain_loss(batch)
    loss.backward()
    assert loss.ndim == 0 and model.encode.weight.grad is not None
    assert main(["models", "list"]) == 0


def test_broken_plugin_is_skipped_with_a_warning(tmp_path, monkeypatch, isolated_registry):
    root = write_plugin(tmp_path / "site", name="broken_lab",
                        entry="lab-broken = broken_lab.model:missing")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    with pytest.warns(RuntimeWarning, match="lab-broken"):
        names = available()
    assert "brainsymphony" in names and "lab-broken" not in names
    with pytest.raises(KeyError, match="could not be loaded"):
        build("lab-broken")


# -- bsym models --------------------------------------------------------------------------
def test_models_list(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "brainsymphony" in out and "paper, tiny" in out


def test_models_params_prints_components_and_total(capsys):
    assert main(["models", "params", "brainsymphony", "--rois", "10", "--timepoints", "20"]) == 0
    out = capsys.readouterr().out
    model = build("brainsymphony", n_rois=10, n_timepoints=20)
    counts = model.param_counts()
    assert f"{counts['total']:,}" in out and "perceiver" in out and "edge_head" in out
    for line in ("fmri", "sc", "fusion"):
        assert f"\n{line} " in out


def test_models_params_paper_preset(capsys):
    assert main(["models", "params", "brainsymphony", "--preset", "paper", "--set",
                 "branches=sc"]) == 0
    assert "1,899,137" in capsys.readouterr().out


def test_models_params_bad_input_exits_2(capsys):
    assert main(["models", "params", "nope"]) == 2
    assert "known models" in capsys.readouterr().err
    assert main(["models", "params", "brainsymphony", "--set", "dim=30", "--set",
                 "heads=4"]) == 2
    assert "divisible" in capsys.readouterr().err


def test_models_cli_does_not_import_torch():
    code = ("import sys, bsym.cli; bsym.cli.build_parser(); import bsym.models.cli; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
