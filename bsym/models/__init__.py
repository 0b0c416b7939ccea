"""One model interface, a registry of names, BrainSymphony and the baselines."""

from bsym.models.base import BrainModel, Embeddings
from bsym.models.registry import ModelSpec, available, build, get_spec, register

__all__ = ["BrainModel", "Embeddings", "ModelSpec", "available", "build", "get_spec", "register"]
