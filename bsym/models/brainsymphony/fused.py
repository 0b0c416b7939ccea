"""Fused CPU kernels of BrainSymphony's attention (opt-in: ``attention="fused"``).

* :class:`~bsym.models.brainsymphony.perceiver.FusedCellSoftmax`: the softmax
  marginals of the Perceiver's factorised cross-attention, computed without storing
  logits: each is computed, exponentiated and accumulated in registers, one query
  row at a time, so the cost is arithmetic instead of a dozen passes over memory
  per chunk of logits.
* :class:`~bsym.models.brainsymphony.signed_graph.FusedSignedAttention`: the SC
  branch's signed attention with its elementwise steps (the product with W, the
  row maximum, the exponentials, the normaliser, the signs) in one pass over each
  row, and likewise its gradient; the matrix products stay with PyTorch.

This module builds and loads them (:func:`extension`, :func:`available`). The C++ source
(``fused_kernels.cpp``) is built on first use with
:func:`torch.utils.cpp_extension.load` (it needs a C++ compiler with OpenMP, and
ninja; about 30 s) and cached under ``TORCH_EXTENSIONS_DIR``
(``~/.cache/torch_extensions`` by default), one build per PyTorch CPU capability
(``torch.backends.cpu.get_cpu_capability()``: AVX2, AVX512, ...), so a cache shared
by a cluster's nodes never hands a node code for instructions it lacks. The kernels
sum in another order than the default ones: results agree to float32 rounding, not
bit for bit. They run in float32, on CPU only.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("fused_kernels.cpp")
KERNELS = (1, 3, 5, 7, 9)
# per PyTorch's CPU capability: the instruction sets the kernels may use
VECTOR_FLAGS = {"AVX2": ["-mavx2", "-mfma"],
                "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mfma",
                           "-mprefer-vector-width=512"]}


@functools.cache
def extension():
    """The compiled kernels (built on the first call, then loaded from the cache)."""
    from torch.utils.cpp_extension import load

    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-ffast-math", "-fopenmp"] + VECTOR_FLAGS.get(capability, [])
    try:
        return load(name=f"bsym_fused_kernels_{capability.lower()}", sources=[str(SOURCE)],
                    extra_cflags=flags, extra_ldflags=["-fopenmp"])
    except (OSError, RuntimeError, ImportError) as err:
        raise RuntimeError(
            "attention='fused' builds C++ kernels on first use and needs a C++ compiler with "
            f"OpenMP and ninja (torch.utils.cpp_extension); the build failed: {err}") from err


@functools.cache
def available() -> bool:
    """Whether the kernels can run here. When they cannot be built, warns once and the
    model runs its default kernels instead: the same results to float32 rounding, slower
    (so a checkpoint trained with them still embeds on a machine without a compiler)."""
    try:
        extension()
    except RuntimeError as err:
        warnings.warn(f"{err}. Running the default kernels instead.", RuntimeWarning,
                      stacklevel=2)
        return False
    return True
