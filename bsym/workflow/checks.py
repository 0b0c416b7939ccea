"""Checks across configuration keys that the workflow's JSON schema cannot express.

The schema checks each value; these check that names refer to something configured: a
task's datasets, registered models, the models fine-tuned, contrasted or swept.
"""

from __future__ import annotations

from bsym.errors import BsymError


class ConfigError(BsymError, ValueError):
    """A workflow configuration whose keys do not fit together; the message names the
    key, what it holds and what it may hold."""


def check_config(config):
    """Raise :class:`ConfigError` on the first name that refers to nothing configured.

    Parameters
    ----------
    config : dict
        The configuration, validated against the workflow's schema with its defaults
        filled in.
    """
    check_task_datasets(config)
    check_model_names(config)
    check_pretrained_lists(config)
    check_sweeps(config)
    check_model_roles(config)


def _unknown(names, known):
    return sorted(set(names) - set(known))


def check_task_datasets(config):
    """Every dataset a task names is configured."""
    for name, task in config["tasks"].items():
        unknown = _unknown(task["datasets"] or [], config["datasets"])
        if unknown:
            raise ConfigError(
                f"config: tasks.{name}.datasets names unknown dataset(s) {unknown}; "
                f"datasets are {sorted(config['datasets'])}"
            )


def check_model_names(config):
    """Every model to pretrain or train from scratch is registered."""
    # the registry lists names without importing any model (no torch at DAG start)
    from bsym.models.registry import registered_names

    known = registered_names()
    blocks = (
        ("models", config["models"]),
        ("supervised.models", config["supervised"]["models"]),
    )
    for block, names in blocks:
        unknown = _unknown(names, known)
        if unknown:
            raise ConfigError(
                f"config: {block} names unknown model(s) {unknown}; registered models are "
                f"{known} (see `bsym models list`)"
            )


def check_pretrained_lists(config):
    """The models fine-tuned or contrasted are pretrained ones (keys of ``models``)."""
    pretrained = sorted(config["models"])
    for block in ("finetune", "attention"):
        unknown = _unknown(config[block]["models"], pretrained)
        if unknown:
            raise ConfigError(
                f"config: {block}.models names {unknown}, which are not pretrained; "
                f"the self-supervised models (keys of models) are {pretrained}"
            )


def check_sweeps(config):
    """Sweeps tune configured supervised baselines on configured tasks."""
    baselines, sweeps = config["supervised"]["models"], config["sweeps"]["models"]
    unknown = _unknown(sweeps, baselines)
    if unknown:
        raise ConfigError(
            f"config: sweeps.models names {unknown}; sweeps tune supervised baselines, "
            f"which are {sorted(baselines)} (keys of supervised.models)"
        )
    for name, sweep in sweeps.items():
        unknown = _unknown(sweep["tasks"] or [], config["tasks"])
        if unknown:
            raise ConfigError(
                f"config: sweeps.models.{name}.tasks names unknown task(s) {unknown}"
            )


def check_model_roles(config):
    """No model is both a self-supervised model and a supervised baseline."""
    clash = sorted(set(config["supervised"]["models"]) & set(config["models"]))
    if clash:
        raise ConfigError(f"config: {clash} are both in models and supervised.models")
