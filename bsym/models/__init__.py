"""One model interface, a registry of names, BrainSymphony and the baselines.

Names are resolved lazily (PEP 562), so importing ``bsym.models`` or one of its
torch-free submodules (``bsym.models.registry``, ``bsym.models.cli``) does not
import torch.
"""

from bsym._lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
