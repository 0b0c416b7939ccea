"""Devices, mixed precision, seeding, RNG state, and DistributedDataParallel helpers."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from bsym.errors import BsymError
from bsym.train.config import PRECISIONS

#: Purposes of the random streams of a run: ``derive_seed(seed, PURPOSE, a, b)`` keeps them
#: apart (the global RNGs, the masks, the data order, the validation masks).
SEED_GLOBAL, SEED_MASKS, SEED_LOADER, SEED_EVAL = 1, 2, 3, 4


class DeviceError(BsymError, RuntimeError):
    """The requested device does not exist on this machine."""


# -- devices ------------------------------------------------------------------------------
def select_device(spec=None, *, local_rank=None) -> torch.device:
    """The training device: CUDA when present, else CPU, unless ``spec`` names one.

    Parameters
    ----------
    spec : str or torch.device, optional
        ``None``/``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    local_rank : int, optional
        Under torchrun, ``"auto"``/``"cuda"`` pick ``cuda:local_rank``.

    Raises
    ------
    DeviceError
        When the requested device is not available here.
    """
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise DeviceError(f"unknown device {spec!r}; expected auto, cpu, cuda, cuda:N or mps") \
            from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {spec!r} requested but CUDA is not available on this "
                               "machine; use --device cpu (or auto)")
        index = device.index if device.index is not None else (local_rank or 0)
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device cuda:{index} requested but only "
                               f"{torch.cuda.device_count()} CUDA device(s) are visible")
        device = torch.device("cuda", index)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {spec!r} requested but MPS is not available; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unsupported device {spec!r}; expected auto, cpu, cuda, cuda:N or mps")
    return device


def autocast_dtype(device, precision="auto"):
    """The autocast dtype for ``precision`` on ``device`` (None = full fp32).

    ``"auto"`` is bf16 on CUDA devices that support it and fp32 elsewhere.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    return torch.bfloat16


def autocast(device, dtype):
    """An autocast context for ``dtype`` on ``device`` (a no-op context for None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


# -- seeding and RNG state ----------------------------------------------------------------
def seed_everything(seed, *, deterministic=True, device=None):
    """Seed python, numpy and torch (CPU and CUDA).

    With ``deterministic``, ``torch.use_deterministic_algorithms(True, warn_only=True)``
    is set on CPU runs (and cuDNN benchmarking is turned off on CUDA).
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        if device is None or torch.device(device).type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def seed_worker(worker_id):
    """DataLoader ``worker_init_fn``: seed numpy and python from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def derive_seed(*parts) -> int:
    """A 63-bit seed from integers (e.g. seed, epoch, rank), stable across runs."""
    state = np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def get_rng_state(generator=None) -> dict:
    """RNG states as tensors, lists and ints (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state, generator=None):
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


# -- distributed --------------------------------------------------------------------------
@dataclass(frozen=True)
class DistEnv:
    """This process's place in a (possibly single-process) distributed run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_env() -> DistEnv:
    """The current process group's rank and size, or the torchrun variables, or 1 process."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), local)
    return DistEnv(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), local)


def init_distributed(backend=None) -> tuple:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK).

    Returns ``(env, created)``: ``created`` is True when this call opened the group
    (the caller then closes it with :func:`cleanup_distributed`). With
    ``WORLD_SIZE`` unset or 1, nothing is initialised.
    """
    if dist.is_available() and dist.is_initialized():
        return dist_env(), False
    env = dist_env()
    if not env.distributed:
        return env, False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={env.world_size} but {var} is not set; launch with "
                               "torchrun (which sets it) or set it yourself")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    return dist_env(), True


def cleanup_distributed():
    """Leave the process group, if one is open."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier():
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_object(obj) -> list:
    """Gather one picklable object per rank (``[obj]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src=0):
    """Rank ``src``'s object on every rank (``obj`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
