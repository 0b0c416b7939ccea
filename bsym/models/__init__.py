"""One model interface, a registry of names, BrainSymphony and the baselines.

Names are resolved lazily (PEP 562), so importing ``bsym.models`` or one of its
torch-free submodules (``bsym.models.registry``, ``bsym.models.cli``) does not
import torch.
"""

from importlib import import_module

_EXPORTS = {
    "BrainModel": "bsym.models.base",
    "Embeddings": "bsym.models.base",
    "ModelSpec": "bsym.models.registry",
    "available": "bsym.models.registry",
    "build": "bsym.models.registry",
    "get_spec": "bsym.models.registry",
    "register": "bsym.models.registry",
}

__all__ = ["BrainModel", "Embeddings", "ModelSpec", "available", "build", "get_spec", "register"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bsym.models' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
