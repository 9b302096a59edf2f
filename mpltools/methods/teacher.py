"""The teacher's side of a teacher–student step, shared by `mpl`, `released` and the `uda` baseline.

Every teacher–student step starts alike (`begin_step`): both learning rates from their schedules,
gradients cleared, both networks in train mode. The teacher then runs ONE forward over the
concatenated labelled, weak and strong batch (`teacher_forward`) and computes its auxiliary losses,
supervised CE and UDA consistency (`auxiliary_losses`). The UDA baseline trains its one network
exactly like this teacher, without the feedback term. Pure torch, no I/O; references are to
`reference/mpl-algorithm.md`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mpltools.losses import smoothed_cross_entropy, uda_consistency, uda_weight
from mpltools.methods.common import Batch, MPLHyper, Networks
from mpltools.methods.optim import learning_rate, set_lr


def learning_rates(step: int, hp: MPLHyper) -> tuple[float, float]:
    """(teacher lr, student lr); the student waits, the teacher does not (§1.11)."""
    t_lr = learning_rate(step, hp.teacher_lr, hp.teacher_warmup, hp.total_steps, 0, hp.lr_schedule)
    s_lr = learning_rate(step, hp.student_lr, hp.student_warmup, hp.total_steps, hp.student_wait, hp.lr_schedule)
    return t_lr, s_lr


def begin_step(nets: Networks, step: int, hp: MPLHyper) -> tuple[float, float]:
    """Sets both learning rates for `step`, clears both networks' gradients, puts both in train mode.

    Returns:
        (teacher lr, student lr).
    """
    t_lr, s_lr = learning_rates(step, hp)
    set_lr(nets.teacher_opt, t_lr)
    set_lr(nets.student_opt, s_lr)
    nets.teacher_opt.zero_grad(set_to_none=True)
    nets.student_opt.zero_grad(set_to_none=True)
    nets.teacher.train()
    nets.student.train()
    return t_lr, s_lr


def teacher_forward(model: nn.Module, batch: Batch, weak_no_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Logits on (labelled, weak, strong) from ONE forward over their concatenation.

    BN statistics are those of the mixed batch, as in the authors' code (§1.2). With
    `weak_no_grad` the weak view runs in a separate no-grad forward: about 22% less work, but
    its BN statistics (and therefore the UDA target and weak-view pseudo labels) come from the
    weak batch alone, and the strong/labelled rows see statistics without it.
    """
    x_l, x_w, x_s = batch.labeled_x, batch.unlabeled_weak, batch.unlabeled_strong
    n_l, n_u = x_l.shape[0], x_s.shape[0]
    if weak_no_grad:
        with torch.no_grad():
            t_weak = model(x_w)
        t_l, t_strong = model(torch.cat([x_l, x_s])).split([n_l, n_u])
        return t_l, t_weak, t_strong
    t_l, t_weak, t_strong = model(torch.cat([x_l, x_w, x_s])).split([n_l, n_u, n_u])
    return t_l, t_weak, t_strong


def auxiliary_losses(
    t_l: Tensor, t_weak: Tensor, t_strong: Tensor, y_l: Tensor, step: int, hp: MPLHyper
) -> tuple[Tensor, Tensor, Tensor, float]:
    """(supervised CE, UDA loss, UDA mask ratio, UDA weight) of the teacher (§1.3); local means."""
    sup = smoothed_cross_entropy(t_l, y_l, hp.label_smoothing)
    uda, mask = uda_consistency(t_weak, t_strong, hp.uda_temperature, hp.uda_threshold)
    return sup, uda, mask, uda_weight(step, hp.uda_weight, hp.uda_ramp_steps)
