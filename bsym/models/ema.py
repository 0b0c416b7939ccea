"""Exponential-moving-average targets (Brain-JEPA's target encoder, BrainMass's BYOL target)."""

from __future__ import annotations

import math

import torch


def ema_momentum(step, total_steps, start, end, shape="linear"):
    """Momentum after ``step`` of ``total_steps`` optimizer steps.

    ``linear`` (I-JEPA / Brain-JEPA) or ``cosine`` (BYOL) from ``start`` to
    ``end``; ``start`` when ``total_steps`` is unknown.
    """
    if total_steps is None or total_steps <= 0 or start == end:
        return float(start)
    frac = min(max(step / total_steps, 0.0), 1.0)
    if shape == "linear":
        return float(start + (end - start) * frac)
    return float(end - (end - start) * (math.cos(math.pi * frac) + 1.0) / 2.0)


@torch.no_grad()
def ema_update_(target, online, momentum):
    """``target <- momentum * target + (1 - momentum) * online``; buffers are copied."""
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise RuntimeError("EMA target and online network have different parameters")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, o_params, alpha=1.0 - momentum)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)


__all__ = ["ema_momentum", "ema_update_"]
