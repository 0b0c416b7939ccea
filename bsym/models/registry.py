"""Models by name: built-ins, and plugins from the ``bsym.models`` entry-point group.

A plugin package declares, in its pyproject.toml::

    [project.entry-points."bsym.models"]
    mymodel = "mypackage.model:spec"

where ``spec`` is a :class:`ModelSpec`. No dotted path from a config file is ever
imported: only registered names can be built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module, metadata

ENTRY_POINT_GROUP = "bsym.models"


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model.

    Parameters
    ----------
    name : str
        Registry name.
    factory : callable
        Called with keyword arguments, returns a :class:`~bsym.models.base.BrainModel`.
    presets : dict
        Preset name -> keyword arguments (at least ``"tiny"``).
    description : str
        One line for ``bsym models list``.
    """

    name: str
    factory: object
    presets: dict = field(default_factory=dict)
    description: str = ""


# Built-in models: name -> module that defines ``SPEC``; imported only when needed.
_BUILTIN = {}
_REGISTRY = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Register a model spec under its name (replacing a previous one is an error)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"a model named {spec.name!r} is already registered")
    if "tiny" not in spec.presets:
        raise ValueError(f"model {spec.name!r} needs a 'tiny' preset, has {sorted(spec.presets)}")
    _REGISTRY[spec.name] = spec
    return spec


def _load_all():
    for name, module in _BUILTIN.items():
        if name not in _REGISTRY:
            register(import_module(module).SPEC)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in _REGISTRY:
            continue
        spec = entry.load()
        if not isinstance(spec, ModelSpec) or spec.name != entry.name:
            raise TypeError(f"entry point {entry.name!r} ({entry.value}) must be a ModelSpec "
                            f"named {entry.name!r}")
        register(spec)


def available() -> list:
    """Names of every model that can be built."""
    _load_all()
    return sorted(_REGISTRY)


def get_spec(name) -> ModelSpec:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}") \
            from None


def build(name, preset="tiny", **overrides):
    """Build a registered model from a preset, with keyword overrides.

    Parameters
    ----------
    name : str
        A name from :func:`available`.
    preset : str
        A preset of that model (``"tiny"``, ``"paper"``, ...).
    **overrides
        Constructor arguments replacing the preset's (e.g. ``n_rois=94``).
    """
    spec = get_spec(name)
    if preset not in spec.presets:
        raise KeyError(f"model {name!r} has no preset {preset!r}; presets: "
                       f"{', '.join(sorted(spec.presets))}")
    kwargs = {**spec.presets[preset], **overrides}
    model = spec.factory(**kwargs)
    model.name, model.preset, model.config = name, preset, kwargs
    return model
