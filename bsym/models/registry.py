"""Models by name: built-ins, and plugins from the ``bsym.models`` entry-point group.

A plugin package declares, in its pyproject.toml::

    [project.entry-points."bsym.models"]
    mymodel = "mypackage.model:spec"

where ``spec`` is a :class:`ModelSpec`. No dotted path from a config file is ever
imported: only registered names can be built.
"""

from __future__ import annotations

import inspect
import warnings
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
_BUILTIN = {"brainsymphony": "bsym.models.brainsymphony",
            "brainlm": "bsym.models.brainlm",
            "brainjepa": "bsym.models.brainjepa",
            "brainmass": "bsym.models.brainmass",
            "bnt": "bsym.models.bnt",
            "brainnetcnn": "bsym.models.brainnetcnn",
            "braingnn": "bsym.models.braingnn",
            "transformer": "bsym.models.vanilla_transformer"}
_REGISTRY = {}
# Plugins whose entry point failed to load: name -> reason (reported by get_spec).
_BROKEN = {}


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
        try:
            spec = entry.load()
            if not isinstance(spec, ModelSpec) or spec.name != entry.name:
                raise TypeError(f"it must be a ModelSpec named {entry.name!r}, got "
                                f"{type(spec).__name__} {getattr(spec, 'name', '')!r}")
            register(spec)
        except Exception as err:  # a broken plugin must not hide the other models
            reason = f"entry point {entry.name} = {entry.value} failed: {err}"
            if _BROKEN.get(entry.name) != reason:
                warnings.warn(f"skipping model plugin: {reason}", RuntimeWarning, stacklevel=3)
            _BROKEN[entry.name] = reason
        else:
            _BROKEN.pop(entry.name, None)


def registered_names() -> list:
    """Names of built-in models and installed plugins, without importing any of them."""
    plugins = {entry.name for entry in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(set(_BUILTIN) | plugins | set(_REGISTRY))


def available() -> list:
    """Names of every model that can be built."""
    _load_all()
    return sorted(_REGISTRY)


def get_spec(name) -> ModelSpec:
    """The :class:`ModelSpec` registered as ``name`` (KeyError listing the known ones).

    A built-in name imports only its own module (not every model's dependencies).
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BUILTIN:
        return register(import_module(_BUILTIN[name]).SPEC)
    _load_all()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BROKEN:
        raise KeyError(f"model plugin {name!r} could not be loaded ({_BROKEN[name]})")
    raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}")


def _check_overrides(spec, kwargs):
    try:
        params = inspect.signature(spec.factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        accepted = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY,
                                                                p.POSITIONAL_OR_KEYWORD)]
        raise TypeError(f"model {spec.name!r} has no argument(s) {', '.join(unknown)}; "
                        f"it accepts: {', '.join(accepted)}")


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
    _check_overrides(spec, kwargs)
    model = spec.factory(**kwargs)
    model.name, model.preset, model.config = name, preset, kwargs
    return model
