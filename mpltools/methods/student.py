"""The update of a network trained on its own losses: the baselines' student (supervised, UDA, FixMatch,
pseudo-label). `begin_update` before the forward, `student_update` after the loss."""

from __future__ import annotations

import torch
from torch import Tensor

from mpltools.methods.common import MPLHyper, Networks, check_finite, finish_gradients, trainable
from mpltools.methods.optim import learning_rate, set_lr
from mpltools.methods.precision import apply_update, scaled
from mpltools.reducer import Reducer


def begin_update(nets: Networks, step: int, hp: MPLHyper) -> float:
    """Set the student's learning rate for `step` (no wait: a baseline trains from step 0), clear its gradients,
    train mode; returns the lr."""
    lr = learning_rate(step, hp.student_lr, hp.student_warmup, hp.total_steps, 0, hp.lr_schedule)
    set_lr(nets.student_opt, lr)
    nets.student_opt.zero_grad(set_to_none=True)
    nets.student.train()
    return lr


def student_update(
    nets: Networks, loss: Tensor, extra: dict[str, Tensor], step: int, hp: MPLHyper, reducer: Reducer
) -> tuple[Tensor, Tensor]:
    """Backward, reduce, (fp16: unscale,) decay, clip, check, step, EMA.

    Under fp16 a non-finite gradient is an overflow: the update (and the EMA's) is skipped and the
    loss scale halved, instead of a `NonFiniteError`.

    Returns:
        (global means of [loss, *extra values], gradient norm).
    """
    params, scaler = trainable(nets.student), nets.student_scaler
    scaled(loss, scaler).backward()
    norm = finish_gradients(nets.student_opt, params, reducer, hp.max_grad_norm, scaler)
    values = reducer.mean(torch.stack([loss.detach(), *(v.detach() for v in extra.values())]))
    check_finite(step, {"student loss": values[0]} if scaler else {"student loss": values[0], "student gradient norm": norm})
    if not apply_update(nets.student_opt, scaler, norm) and nets.ema is not None:
        nets.ema.update(nets.student, step)
    return values, norm
