"""Baselines that run through the same trainer as MPL, so a user can check whether MPL helps.

Each step reads one `Batch`, updates `nets.student` (the only trained network) in place and
returns metrics as 0-dim tensors. They share MPL's optimiser, weight decay, clipping, EMA and
finiteness guard, and use the *student's* lr and warm-up without the wait (the wait exists to
let MPL's teacher learn first). References are to `reference/mpl-algorithm.md`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mpltools.losses import smoothed_cross_entropy
from mpltools.methods.common import (
    Batch,
    MPLHyper,
    Networks,
    draw_pseudo_labels,
)
from mpltools.methods.student import begin_update, student_update
from mpltools.methods.teacher import auxiliary_losses, teacher_forward
from mpltools.reducer import LOCAL, Reducer


def supervised_step(
    nets: Networks,
    batch: Batch,
    step: int,
    hp: MPLHyper,
    reducer: Reducer = LOCAL,
    generator: torch.Generator | None = None,
    diagnose: bool = False,
) -> dict[str, Tensor]:
    """Supervised learning on the labelled batch only: label-smoothed CE."""
    del generator, diagnose
    lr = begin_update(nets, step, hp)
    loss = smoothed_cross_entropy(nets.student(batch.labeled_x), batch.labeled_y, hp.label_smoothing)
    values, norm = student_update(nets, loss, {}, step, hp, reducer)
    return {"student/loss": values[0], "lr/student": torch.tensor(lr), "grad_norm/student": norm}


def uda_step(
    nets: Networks,
    batch: Batch,
    step: int,
    hp: MPLHyper,
    reducer: Reducer = LOCAL,
    generator: torch.Generator | None = None,
    diagnose: bool = False,
) -> dict[str, Tensor]:
    """UDA: the network trained exactly like MPL's teacher without the feedback term.

    ``teacher_supervised_weight * CE_sup + w_uda(step) * UDA`` from one forward over
    ``[x_l; x_u_weak; x_u_strong]`` (reference §1.3), honouring `teacher_weak_no_grad`.
    """
    del generator, diagnose
    lr = begin_update(nets, step, hp)
    t_l, t_weak, t_strong = teacher_forward(nets.student, batch, hp.teacher_weak_no_grad)
    sup, uda, mask, w_uda = auxiliary_losses(t_l, t_weak, t_strong, batch.labeled_y, step, hp)
    loss = hp.teacher_supervised_weight * sup + w_uda * uda
    values, norm = student_update(nets, loss, {"sup": sup, "uda": uda, "mask": mask}, step, hp, reducer)
    return {
        "student/loss": values[0],
        "student/sup": values[1],
        "student/uda": values[2],
        "student/uda_mask": values[3],
        "student/uda_weight": torch.tensor(w_uda),
        "lr/student": torch.tensor(lr),
        "grad_norm/student": norm,
    }


def pseudo_label_step(
    nets: Networks,
    batch: Batch,
    step: int,
    hp: MPLHyper,
    reducer: Reducer = LOCAL,
    generator: torch.Generator | None = None,
    diagnose: bool = False,
) -> dict[str, Tensor]:
    """Pseudo Labels with a FIXED teacher (paper eq. 1): the student never sees labels.

    The teacher predicts in eval mode without gradient on `pseudo_label_view` and is never
    updated (its running statistics included); the student learns its sampled, argmax or soft
    labels on `student_view` (the strong view by default) with label smoothing.
    """
    del diagnose
    lr = begin_update(nets, step, hp)
    teacher = nets.teacher
    teacher.eval()
    with torch.no_grad():
        logits = teacher(batch.unlabeled(hp.pseudo_label_view))
    target = draw_pseudo_labels(logits, hp.pseudo_labels, generator)
    loss = smoothed_cross_entropy(nets.student(batch.unlabeled(hp.student_view)), target, hp.label_smoothing)
    confidence = torch.softmax(logits, dim=-1).max(dim=-1).values.mean()
    values, norm = student_update(nets, loss, {"confidence": confidence}, step, hp, reducer)
    return {
        "student/loss": values[0],
        "teacher/confidence": values[1],
        "lr/student": torch.tensor(lr),
        "grad_norm/student": norm,
    }
