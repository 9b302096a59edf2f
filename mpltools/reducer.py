"""Averaging over training processes: the single-process no-op `LOCAL` and `TorchDistributedReducer`.

The training steps (`mpltools.methods`) take a reducer; `runtime.start` picks the one a run needs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class Reducer:
    """Averages tensors over training processes. This base class is the single-process no-op.

    Every process holds an equal-size local batch, so the global mean of a loss is the mean of
    the local means, and the gradient of the global mean loss is the mean of local gradients.
    """

    world_size: int = 1

    def mean(self, t: Tensor) -> Tensor:
        """Returns the cross-process mean of `t` (detached; `t` itself is left untouched)."""
        return t.detach()

    def mean_grads(self, params: Iterable[Tensor]) -> None:
        """Replaces each ``p.grad`` by its cross-process mean, in place."""


LOCAL = Reducer()


class TorchDistributedReducer(Reducer):
    """`Reducer` over an initialised `torch.distributed` process group (SUM, then / world size).

    Gradients travel as one flat bucket per (device, dtype) so a step costs one collective per
    network, not one per parameter.
    """

    def __init__(self, group=None):
        import torch.distributed as dist  # lazily: single-process users never touch it

        self._dist = dist
        self.group = group
        self.world_size = dist.get_world_size(group)

    def mean(self, t: Tensor) -> Tensor:
        out = t.detach().clone()
        self._dist.all_reduce(out, op=self._dist.ReduceOp.SUM, group=self.group)
        return out.div_(self.world_size)

    def mean_grads(self, params: Iterable[Tensor]) -> None:
        buckets: dict[tuple, list[Tensor]] = {}
        for p in params:
            if p.grad is None:
                raise ValueError("mean_grads: a parameter has no .grad; call zero_missing_grads first")
            buckets.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        for grads in buckets.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            self._dist.all_reduce(flat, op=self._dist.ReduceOp.SUM, group=self.group)
            flat.div_(self.world_size)
            for g, r in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(r.view_as(g))
