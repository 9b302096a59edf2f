"""What an MPL step reports: its metrics, and what the feedback does on logging steps (`diagnose=True`).

Pure torch; no I/O; nothing here changes a network, an optimiser, a BN statistic or an RNG, so a
run's weights do not depend on how often it logs (tested).

* `mpl_metrics`: the dict `mpl_step` returns, from the values its phases computed.

* `teacher_gradient_split`: the teacher's gradient of each weighted term of its loss (supervised,
  UDA, MPL) by separate ``autograd.grad`` calls on the retained graph — their norms and the cosine
  between the MPL part and the others. This answers "does the MPL term move the teacher at all?".
* `pseudo_label_health`: the class histogram of the pseudo labels (and its entropy, to see a
  collapse onto a few classes), the agreement of the student with them, and their accuracy when
  the unlabelled batch carries hidden labels (an analysis side file; never trained on).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mpltools.losses import flat_cosine
from mpltools.methods.common import MPLHyper, Networks


def mpl_metrics(
    nets: Networks,
    hp: MPLHyper,
    *,
    losses: Tensor,
    uda_weight: float,
    mpl_mean: Tensor,
    ce: tuple[Tensor, Tensor],
    h: tuple[Tensor, Tensor],
    lrs: tuple[float, float],
    grad_norms: tuple[Tensor, Tensor],
    skipped: tuple[bool, bool],
    diag: dict[str, Tensor],
) -> dict[str, Tensor]:
    """The metrics of one MPL step, read after it (the baseline and the fp16 scales as they now are).

    Args:
        nets: the networks the step updated (baseline, loss scalers).
        hp: the step's hyper-parameters (the teacher's loss weights, the feedback's sign, soft labels).
        losses: global means of [teacher CE_sup, teacher UDA, UDA mask ratio, student loss].
        uda_weight: the UDA weight at this step.
        mpl_mean: global mean of CE(y_hat, T(x_u)) (hard labels) or of the soft surrogate's value.
        ce: global (CE_old, CE_new); 0 when not measured.
        h: (h, h_c), h_c centred by the baseline when there is one.
        lrs, grad_norms, skipped: (teacher, student) each; grad norms before clipping.
        diag: ``diag/*`` and ``hist/*`` of a diagnose step, else empty.

    Returns:
        teacher/{sup,uda,uda_weight,uda_mask,mpl,loss}, student/{loss,ce_old,ce_new,skipped},
        feedback/{h,baseline,h_centered}, lr/{teacher,student}, grad_norm/{teacher,student}, the
        `diag` entries; under fp16 also amp/{student,teacher}_scale and teacher/skipped. teacher/mpl is
        CE(y_hat, T(x_u)) for hard labels and the value of the soft surrogate ``sum p * dL/dp`` for soft
        labels; teacher/loss is the global value of the teacher's loss.
    """
    h_raw, h_c = h
    mpl_global = mpl_mean if hp.pseudo_labels == "soft" else h_c * mpl_mean
    t_loss = hp.teacher_supervised_weight * losses[0] + uda_weight * losses[1] + hp.feedback_sign * hp.mpl_weight * mpl_global
    out = {
        "teacher/sup": losses[0],
        "teacher/uda": losses[1],
        "teacher/uda_weight": torch.tensor(uda_weight),
        "teacher/uda_mask": losses[2],
        "teacher/mpl": mpl_mean,
        "teacher/loss": t_loss,
        "student/loss": losses[3],
        "student/ce_old": ce[0],
        "student/ce_new": ce[1],
        "student/skipped": torch.tensor(float(skipped[1])),
        "feedback/h": h_raw.detach(),
        "feedback/baseline": nets.baseline.detach().clone(),
        "feedback/h_centered": h_c,
        "lr/teacher": torch.tensor(lrs[0]),
        "lr/student": torch.tensor(lrs[1]),
        "grad_norm/teacher": grad_norms[0],
        "grad_norm/student": grad_norms[1],
        **diag,
    }
    if nets.student_scaler is not None:
        out["amp/student_scale"] = torch.tensor(nets.student_scaler.scale)
        out["amp/teacher_scale"] = torch.tensor(nets.teacher_scaler.scale)
        out["teacher/skipped"] = torch.tensor(float(skipped[0]))
    return out


def _flat_grad(loss: Tensor, params: list[Tensor]) -> Tensor:
    if not loss.requires_grad:
        return torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=params[0].dtype)
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def teacher_gradient_split(terms: dict[str, Tensor], params: list[Tensor], reducer, scale: float = 1.0) -> dict[str, Tensor]:
    """Norms of the teacher's gradient of each weighted term and the MPL part's cosines with the rest.

    Args:
        terms: ``{"sup": w_sup * CE_sup, "uda": w_uda * UDA, "mpl": mpl_weight * MPL term}`` — the
            summands of the teacher's loss, graphs alive.
        params: the teacher's trainable parameters.
        reducer: cross-process means (so the figures are those of the global gradient).
        scale: the fp16 loss scale; the terms are multiplied by it before differentiating (as the
            real backward is) and the gradients divided by it.

    Returns:
        ``diag/t_grad_norm_{sup,uda,mpl,aux}`` (aux = sup + uda) and ``diag/cos_mpl_{sup,uda,aux}``,
        0-dim tensors. The three gradients add up to the teacher's gradient before weight decay
        and clipping.
    """
    g = {name: reducer.mean(_flat_grad(term * scale if scale != 1.0 else term, params)) / scale for name, term in terms.items()}
    aux = g["sup"] + g["uda"]
    out = {f"diag/t_grad_norm_{name}": torch.linalg.vector_norm(v) for name, v in g.items()}
    out["diag/t_grad_norm_aux"] = torch.linalg.vector_norm(aux)
    for name, other in (("sup", g["sup"]), ("uda", g["uda"]), ("aux", aux)):
        out[f"diag/cos_mpl_{name}"] = flat_cosine(g["mpl"], other)
    return out


def pseudo_label_health(
    pseudo_classes: Tensor, student_logits: Tensor, num_classes: int, reducer, hidden_labels: Tensor | None = None
) -> dict[str, Tensor]:
    """Class histogram of the pseudo labels and how the student and the truth relate to them.

    Args:
        pseudo_classes: (N,) class of each pseudo label (the argmax of a soft one).
        student_logits: (N, K) the student's logits on the same (strong) views.
        num_classes: K.
        reducer: cross-process means; the histogram is the global count.
        hidden_labels: (N,) true classes where the unlabelled set keeps them for analysis.

    Returns:
        ``hist/pseudo_labels`` ((K,) global counts), ``diag/pl_entropy`` (nats),
        ``diag/pl_entropy_norm`` (divided by log K: 1 = uniform, 0 = a single class),
        ``diag/pl_max_class_fraction``, ``diag/pl_agreement`` (student argmax == pseudo class) and,
        with hidden labels, ``diag/pl_accuracy``.
    """
    counts = torch.bincount(pseudo_classes.reshape(-1), minlength=num_classes).to(torch.float32)
    hist = reducer.mean(counts) * reducer.world_size
    frac = hist / hist.sum().clamp(min=1.0)
    entropy = -(frac * torch.log(frac.clamp(min=1e-30))).sum()
    rates = [(student_logits.detach().argmax(dim=-1) == pseudo_classes).to(torch.float32).mean()]
    if hidden_labels is not None:
        rates.append((hidden_labels == pseudo_classes).to(torch.float32).mean())
    rates = reducer.mean(torch.stack(rates))
    out = {
        "hist/pseudo_labels": hist,
        "diag/pl_entropy": entropy,
        "diag/pl_entropy_norm": entropy / math.log(num_classes) if num_classes > 1 else torch.zeros(()),
        "diag/pl_max_class_fraction": frac.max(),
        "diag/pl_agreement": rates[0],
    }
    if hidden_labels is not None:
        out["diag/pl_accuracy"] = rates[1]
    return out
