"""Loss functions and feedback signals of the MPL family (pure functions of tensors).

Reads tensors, returns tensors; no state, no I/O. Every loss is a *local* batch mean; the
training steps turn local means into global means with a `Reducer` (equal local batch sizes, so
the global mean is the mean of the local means).

References are to `reference/mpl-algorithm.md` (the authors' released code and the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def smoothed_cross_entropy(logits: Tensor, target: Tensor, smoothing: float = 0.0) -> Tensor:
    """Batch-mean cross-entropy with TF-style label smoothing.

    The smoothed target is ``(1 - smoothing) * target + smoothing / K`` (TF
    `softmax_cross_entropy`, reference §1.3), which is also what PyTorch's
    ``label_smoothing`` does for integer labels.

    Args:
        logits: (N, K) unnormalised scores.
        target: (N,) integer class labels, or (N, K) probabilities. A probability target is
            differentiable (the "soft" MPL meta-gradient relies on this).
        smoothing: label-smoothing coefficient in [0, 1).

    Returns:
        0-dim tensor, the mean over the N examples.
    """
    if not target.is_floating_point():
        return F.cross_entropy(logits, target, label_smoothing=smoothing)
    num_classes = logits.shape[-1]
    if smoothing:
        target = (1.0 - smoothing) * target + smoothing / num_classes
    return -(target * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def uda_consistency(logits_weak: Tensor, logits_strong: Tensor, temperature: float, threshold: float) -> tuple[Tensor, Tensor]:
    """UDA consistency loss as the authors coded it (reference §1.3).

    The target ``q = softmax(logits_weak / temperature)`` is detached; the confidence mask is
    computed on the *sharpened* q (not on the raw softmax, unlike the original UDA code); the
    sum of masked cross-entropies is divided by N, so masked-out examples count in the
    denominator. No label smoothing.

    Args:
        logits_weak: (N, K) logits of the weakly augmented view (target side, no gradient).
        logits_strong: (N, K) logits of the strongly augmented view (gradient side).
        temperature: sharpening temperature (< 1 sharpens).
        threshold: keep examples whose largest sharpened probability is >= threshold.

    Returns:
        (loss, mask_ratio): 0-dim tensors; mask_ratio is the fraction of kept examples.
    """
    q = torch.softmax(logits_weak.detach() / temperature, dim=-1)
    per_example = -(q * F.log_softmax(logits_strong, dim=-1)).sum(dim=-1)
    # Mask in the loss's dtype (float32 under autocast) so the logged ratio is not bf16-rounded.
    mask = (q.max(dim=-1).values >= threshold).to(per_example.dtype)
    return (mask * per_example).mean(), mask.mean()


def uda_weight(step: int, weight: float, ramp_steps: int) -> float:
    """Weight of the UDA loss: linear ramp from 0 over `ramp_steps` (reference §1.3).

    ``weight * min(1, step / ramp_steps)``; ``ramp_steps <= 0`` gives the full weight at once.
    """
    if ramp_steps <= 0:
        return float(weight)
    return float(weight) * min(1.0, step / ramp_steps)


def flat_dot(a: Tensor, b: Tensor) -> Tensor:
    """Dot product of two flattened vectors (the 'dot' feedback, reference §1.9)."""
    return torch.dot(a.reshape(-1), b.reshape(-1))


def flat_cosine(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Cosine similarity of two flattened vectors; 0 when either vector is 0.

    Appendix C.3's "cosine distance" read as cosine *similarity* (reference §1.8, §7 item 4);
    the `eps` floor keeps h exactly 0 when the student did not move.
    """
    a, b = a.reshape(-1), b.reshape(-1)
    denom = torch.clamp(torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b), min=eps)
    return torch.dot(a, b) / denom
