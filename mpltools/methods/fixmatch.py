"""FixMatch (Sohn et al., 2020) as a baseline through the same trainer as MPL.

One network (called the student, like every single-network baseline) is trained on

    loss = CE_sup(x_l, y_l) + fixmatch_weight * (1 / N_u) * sum_i 1[max p_i >= tau] * CE(f(x_u_strong_i), argmax p_i)

where ``p = softmax(f(x_u_weak))`` is taken without gradient, ``tau`` is `fixmatch_threshold`
(the paper's 0.95) and `fixmatch_weight` is the paper's lambda_u (1). As in the paper the mean
runs over the whole unlabelled batch, so examples below the threshold count in the denominator,
and the unlabelled CE is on hard labels without smoothing or sharpening. The supervised CE uses
the recipe's `label_smoothing`, like the other baselines (0 gives the paper's plain CE).

The forward is the one UDA and MPL's teacher use: ONE pass over ``[x_l; x_u_weak; x_u_strong]``
(BN statistics of the mixed batch; `teacher_weak_no_grad` moves the weak view to a separate
no-grad pass). Optimiser, warm-up, schedule, weight decay, clipping, EMA and the finiteness guard
are those of the other baselines (`baselines.py`). Under autocast the pseudo labels, the mask
and both CEs are computed in fp32 from the (possibly bf16) logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mpltools.losses import smoothed_cross_entropy
from mpltools.methods.common import Batch, MPLHyper, Networks
from mpltools.methods.diagnostics import pseudo_label_health
from mpltools.methods.student import begin_update, student_update
from mpltools.methods.teacher import teacher_forward
from mpltools.reducer import LOCAL, Reducer


def fixmatch_loss(logits_weak: Tensor, logits_strong: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """The unlabelled term of FixMatch, a local batch mean.

    Args:
        logits_weak: (N, K) logits of the weak views (the target side; detached here).
        logits_strong: (N, K) logits of the strong views of the same images (the gradient side).
        threshold: keep an example when its largest weak-view probability is >= threshold.

    Returns:
        (loss, mask ratio, pseudo classes (N,)): ``mean_i mask_i * CE(strong_i, argmax weak_i)``,
        the fraction of examples kept, and the argmax labels (kept or not).
    """
    probs = torch.softmax(logits_weak.detach().float(), dim=-1)
    confidence, pseudo = probs.max(dim=-1)
    mask = (confidence >= threshold).to(torch.float32)
    per_example = F.cross_entropy(logits_strong.float(), pseudo, reduction="none")
    return (mask * per_example).mean(), mask.mean(), pseudo


def fixmatch_step(
    nets: Networks,
    batch: Batch,
    step: int,
    hp: MPLHyper,
    reducer: Reducer = LOCAL,
    generator: torch.Generator | None = None,
    diagnose: bool = False,
) -> dict[str, Tensor]:
    """One FixMatch step on `nets.student`; returns global means as 0-dim tensors.

    Metrics: student/{loss, sup, fixmatch, fixmatch_mask}, lr/student, grad_norm/student; on
    diagnose steps also the pseudo labels' health (`diagnostics.pseudo_label_health`: their class
    histogram, entropy and, with hidden labels, ``diag/pl_accuracy`` of the argmax labels, kept
    or not).
    """
    del generator
    lr = begin_update(nets, step, hp)
    logits_l, logits_weak, logits_strong = teacher_forward(nets.student, batch, hp.teacher_weak_no_grad)
    sup = smoothed_cross_entropy(logits_l.float(), batch.labeled_y, hp.label_smoothing)
    unl, mask, pseudo = fixmatch_loss(logits_weak, logits_strong, hp.fixmatch_threshold)
    loss = sup + hp.fixmatch_weight * unl
    values, norm = student_update(nets, loss, {"sup": sup, "fixmatch": unl, "mask": mask}, step, hp, reducer)
    out = {
        "student/loss": values[0],
        "student/sup": values[1],
        "student/fixmatch": values[2],
        "student/fixmatch_mask": values[3],
        "lr/student": torch.tensor(lr),
        "grad_norm/student": norm,
    }
    if diagnose:
        out.update(pseudo_label_health(pseudo, logits_strong, logits_strong.shape[-1], reducer, batch.unlabeled_y))
    return out
