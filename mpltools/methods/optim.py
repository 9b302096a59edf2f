"""Optimiser, learning-rate schedules and EMA, as the authors' code does them.

Pure torch; no I/O. References are to `reference/mpl-algorithm.md` (§1.4, §1.11, §7 items
8-10). A step uses them in this order: backward -> `Reducer.mean_grads` ->
`apply_weight_decay_and_clip` -> finiteness check -> ``optimizer.step()`` -> `EMA.update`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

# Our own param-group key: torch's SGD keeps weight_decay=0 so that the L2 term is added by
# `apply_weight_decay_and_clip` *before* clipping, like the authors (reference §7 item 9).
WD_KEY = "coupled_weight_decay"

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def norm_parameter_names(model: nn.Module) -> frozenset[str]:
    """Names of the parameters of normalisation layers (BN, LayerNorm, GroupNorm, RMSNorm).

    The authors skip weight decay on variables whose *name* contains "bn", "batchnorm",
    "layer_norm"... (reference §1.4); matching by module type finds the same parameters without
    relying on naming conventions. Biases of convolutions and linear layers are not included.
    """
    names = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, _NORM_TYPES):
            for p_name, _ in module.named_parameters(recurse=False):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return frozenset(names)


def build_sgd(
    model: nn.Module,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    no_decay_names: Iterable[str] = frozenset(),
) -> torch.optim.SGD:
    """SGD (Nesterov momentum by default, reference §1.11) whose groups carry our own decay.

    Parameters named in `no_decay_names` get decay 0; every other trainable parameter,
    biases included, gets `weight_decay` (reference §7 item 9). torch's own ``weight_decay``
    stays 0.

    Raises:
        ValueError: a name in `no_decay_names` is not a trainable parameter of `model`.
    """
    return torch.optim.SGD(
        _decay_groups(model, weight_decay, no_decay_names),
        lr=lr,
        momentum=momentum,
        nesterov=nesterov and momentum > 0,
        weight_decay=0.0,
    )


def build_adam(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    no_decay_names: Iterable[str] = frozenset(),
) -> torch.optim.Adam:
    """Adam (torch defaults: betas 0.9/0.999, eps 1e-8) with the same decay groups as `build_sgd`.

    Not in the paper: a study option for the teacher (``[teacher] optimizer = "adam"``), whose
    step is scale-free, so a tiny feedback gradient still moves the teacher. The decay stays
    coupled (``g += wd * theta`` before Adam's normalisation, i.e. Adam with L2, not AdamW).
    """
    return torch.optim.Adam(_decay_groups(model, weight_decay, no_decay_names), lr=lr, weight_decay=0.0)


def _decay_groups(model: nn.Module, weight_decay: float, no_decay_names: Iterable[str]) -> list[dict]:
    no_decay_names = frozenset(no_decay_names)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    unknown = no_decay_names - {n for n, _ in named}
    if unknown:
        raise ValueError(f"no_decay_names not among the model's parameters: {sorted(unknown)}")
    decay = [p for n, p in named if n not in no_decay_names]
    no_decay = [p for n, p in named if n in no_decay_names]
    return [{"params": ps, WD_KEY: wd} for ps, wd in ((decay, weight_decay), (no_decay, 0.0)) if ps]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Sets the learning rate of every param group (schedules are pure functions of the step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def apply_weight_decay_and_clip(optimizer: torch.optim.Optimizer, max_grad_norm: float | None) -> Tensor:
    """``g += wd * theta`` per group (coupled L2), then global-norm clipping, in place.

    Exactly the authors' order: decay first, then `tf.clip_by_global_norm`, whose scale is
    ``max_norm / max(norm, max_norm)`` (reference §1.4, §7 item 9). Parameters without a
    gradient are left alone (the steps give every parameter a gradient first).

    Returns:
        The global gradient norm after weight decay and before clipping (0-dim tensor; no sync).
    """
    grads: list[Tensor] = []
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        group_grads = [p.grad for p in params]
        wd = group.get(WD_KEY, 0.0)
        if wd and params:
            torch._foreach_add_(group_grads, [p.detach() for p in params], alpha=wd)
        grads += group_grads
    norm = torch.nn.utils.get_total_norm(grads)
    if max_grad_norm is not None and math.isfinite(max_grad_norm) and grads:
        scale = max_grad_norm / torch.clamp(norm, min=max_grad_norm)
        torch._foreach_mul_(grads, scale)
    return norm


def clip_scale(norm: Tensor, max_grad_norm: float | None) -> Tensor | float:
    """The factor `apply_weight_decay_and_clip` multiplied the gradients by."""
    if max_grad_norm is None or not math.isfinite(max_grad_norm):
        return 1.0
    return max_grad_norm / torch.clamp(norm, min=max_grad_norm)


def learning_rate(
    step: int,
    base_lr: float,
    warmup_steps: int,
    total_steps: int,
    wait_steps: int = 0,
    schedule: str = "cosine",
) -> float:
    """The authors' `get_learning_rate` (reference §1.11) as a pure function of the step.

    With ``s = step - wait_steps``: 0 while ``s < 0``; ``base_lr * (s + 1) / warmup_steps`` while
    ``s < warmup_steps``; then "cosine" ``base_lr * 0.5 * (1 + cos(pi * min(s - W, D) / D))``,
    "linear" ``base_lr * (1 - min(s - W, D) / D)`` or "constant" ``base_lr``, where
    ``D = total_steps - warmup_steps - wait_steps`` (at least 1). It reaches 0 at `total_steps`
    and stays there.
    """
    s = step - wait_steps
    if s < 0:
        return 0.0
    if s < warmup_steps:
        return base_lr * (s + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    decay_steps = max(1, total_steps - warmup_steps - wait_steps)
    progress = min(s - warmup_steps, decay_steps) / decay_steps
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return base_lr * (1.0 - progress)
    raise ValueError(f"schedule must be 'cosine', 'constant' or 'linear', got {schedule!r}")


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with the authors' warm-up: ``min(decay, (step + 1) / (step + 10))`` (§1.11)."""
    return min(decay, (step + 1) / (step + 10))


class EMA:
    """Exponential moving average of a model's parameters AND buffers (BN running statistics).

    ``ema <- d * ema + (1 - d) * value`` with ``d = ema_decay_at(step, decay)`` (the authors'
    `setup_ema`, reference §1.11, §7 item 10); integer buffers (``num_batches_tracked``) are
    copied. The shadow starts as a copy of the model (TF starts it at zeros/ones; the
    ``(t+1)/(t+10)`` warm-up makes the difference vanish within a few dozen steps). With
    ``decay = 0`` the shadow equals the raw weights after every update.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        # Contiguous copies (even of channels-last weights) so safetensors can save them as is.
        self.shadow = {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = ema_decay_at(step, self.decay)
        current = model.state_dict(keep_vars=True)
        ema_f, cur_f = [], []
        for k, e in self.shadow.items():
            v = current[k].detach()
            if e.is_floating_point():
                ema_f.append(e)
                cur_f.append(v)
            else:
                e.copy_(v)
        if ema_f:
            torch._foreach_lerp_(ema_f, cur_f, 1.0 - d)

    def copy_to(self, model: nn.Module) -> None:
        """Loads the averaged weights into `model` (e.g. an evaluation copy of the student)."""
        model.load_state_dict(self.shadow)

    def state_dict(self) -> dict[str, Tensor]:
        """Name -> tensor (the live shadow tensors; safetensors-ready)."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state.keys() != self.shadow.keys():
            missing = sorted(self.shadow.keys() - state.keys())
            unexpected = sorted(state.keys() - self.shadow.keys())
            raise KeyError(f"EMA state mismatch: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            for k, e in self.shadow.items():
                e.copy_(state[k])
