"""Precision of the training steps: which passes run in low precision, and fp16 loss scaling.

Under ``runtime.mixed_precision = "bf16"`` or ``"fp16"`` the trainer runs each step inside
``torch.autocast(..., cache_enabled=False)`` (`mpltools.runtime.Runtime.autocast`). Two facts shape
what the steps do inside it:

* Autocast with its weight cache on keeps the low-precision copy of a weight that it made for the
  first forward of the region. The student is updated in place in the middle of an MPL step, so a
  cached region would compute ``CE_new`` and ``grad L_l(theta')`` with the *pre-update* weights:
  ``h`` becomes 0 (no BN) or noise of either sign (with BN). The trainer's region therefore has the
  cache off, and every measurement after the update runs in `full_precision` anyway.
* ``h = CE_old - CE_new`` is a small difference of two nearly equal losses: in bf16 (8 bits of
  mantissa) rounding alone is larger than h at realistic student learning rates. The student's
  labelled-loss measurements, ``grad L_l(theta')`` and every dot product or cosine made of them
  are computed with autocast disabled, i.e. in fp32 from the fp32 master weights (`full_precision`).

The bulk of the FLOPs — the teacher's forward over ``[x_l; x_u_weak; x_u_strong]`` and the student's
forward/backward over the strong view — stays in the autocast dtype. Parameters, gradients and
optimiser state are fp32 throughout.

fp16 additionally needs loss scaling (its exponent range underflows small gradients). `LossScaler`
is the dynamic scheme of `torch.amp.GradScaler` (scale, halve on overflow, double after
`growth_interval` clean steps) written out so that the steps can reduce gradients across processes
*before* checking them (every process then takes the same skip decision), add the coupled weight
decay after unscaling, and store the state as plain JSON scalars in the resume state.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor


@contextlib.contextmanager
def full_precision(device_type: str) -> Iterator[None]:
    """Autocast off: the ops inside run in the dtype of their inputs and weights (fp32 here)."""
    with torch.autocast(device_type=device_type, enabled=False):
        yield


class LossScaler:
    """Dynamic loss scaling for fp16, one per network.

    ``scale_loss`` multiplies the loss before backward; ``unscale_`` divides the (reduced)
    gradients in place; after the step ``update(overflow)`` halves the scale on overflow (the step
    was skipped) or doubles it after `growth_interval` consecutive clean steps. The defaults are
    `torch.amp.GradScaler`'s.
    """

    def __init__(
        self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5, growth_interval: int = 2000
    ):
        if init_scale <= 0 or growth_factor <= 1 or not 0 < backoff_factor < 1 or growth_interval < 1:
            raise ValueError("LossScaler needs init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1, growth_interval >= 1")
        self.scale = float(init_scale)
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.clean_steps = 0  # consecutive steps without overflow since the last change of scale

    def scale_loss(self, loss: Tensor) -> Tensor:
        return loss * self.scale

    def unscale_(self, params: Iterable[Tensor]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, 1.0 / self.scale)

    def update(self, overflow: bool) -> None:
        if overflow:
            self.scale *= self.backoff_factor
            self.clean_steps = 0
            return
        self.clean_steps += 1
        if self.clean_steps >= self.growth_interval:
            self.scale *= self.growth_factor
            self.clean_steps = 0

    def state_dict(self) -> dict:
        return {
            "scale": self.scale,
            "clean_steps": self.clean_steps,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
        }

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.clean_steps = int(state["clean_steps"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])


def scaled(loss: Tensor, scaler: LossScaler | None) -> Tensor:
    """The loss to call ``backward`` on: scaled under fp16, itself otherwise."""
    return loss if scaler is None else scaler.scale_loss(loss)


def overflowed(norm: Tensor, scaler: LossScaler | None) -> bool:
    """Whether an fp16 backward overflowed (non-finite gradient norm). Always False without a
    scaler (no host sync then); one sync with one."""
    return scaler is not None and not math.isfinite(float(norm))


def apply_update(optimizer: torch.optim.Optimizer, scaler: LossScaler | None, norm: Tensor) -> bool:
    """``optimizer.step()`` unless an fp16 backward overflowed; updates the scaler. Returns skipped."""
    skipped = overflowed(norm, scaler)
    if not skipped:
        optimizer.step()
    if scaler is not None:
        scaler.update(skipped)
    return skipped
