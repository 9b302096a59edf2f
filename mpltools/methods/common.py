"""What every training step shares: hyper-parameters (and `hyper_from`, which reads them from a recipe),
networks, batches, gradient reduction, the finiteness guard, BN/dropout modes for measurements, and
pseudo-label drawing. Cross-process means are `mpltools.reducer`'s.

Pure torch; no I/O. References are to `reference/mpl-algorithm.md`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from mpltools.config import MethodConfig, OptimConfig, Recipe, ScheduleConfig
from mpltools.methods.optim import apply_weight_decay_and_clip
from mpltools.methods.precision import LossScaler
from mpltools.reducer import Reducer

# ----------------------------------------------------------------------------- gradients


def zero_missing_grads(params: Iterable[Tensor]) -> None:
    """Gives every parameter without a gradient a zero one.

    The authors add weight decay even to variables without a gradient (`add_weight_decay`,
    reference §1.4), and every process must reduce the same bucket layout.
    """
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def reduce_gradients(params: list[Tensor], reducer: Reducer, scaler: LossScaler | None = None) -> None:
    """After backward: zero-fill, cross-process mean, then (fp16) unscale.

    Unscaling after the mean lets every process see the same overflow, so all take the same
    skip decision.
    """
    zero_missing_grads(params)
    reducer.mean_grads(params)
    if scaler is not None:
        scaler.unscale_(params)


def finish_gradients(
    optimizer: torch.optim.Optimizer,
    params: list[Tensor],
    reducer: Reducer,
    max_grad_norm: float | None,
    scaler: LossScaler | None = None,
) -> Tensor:
    """After backward: zero-fill, cross-process mean, unscale (fp16), coupled weight decay, clipping.

    Returns the global gradient norm (before clipping), identical on every process; it is
    non-finite after an fp16 overflow (see `precision.apply_update`).
    """
    reduce_gradients(params, reducer, scaler)
    return apply_weight_decay_and_clip(optimizer, max_grad_norm)


def flatten(tensors: Iterable[Tensor]) -> Tensor:
    """Concatenates tensors into one new 1-D tensor (a copy)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


# ----------------------------------------------------------------------------- finiteness


class NonFiniteError(Exception):
    """A loss term or gradient norm was NaN/inf; the optimiser update was NOT applied.

    Attributes:
        step: the global step at which it happened.
        term: which quantity, e.g. "teacher supervised loss", "student gradient norm", "h".
        value: the offending value.
    """

    def __init__(self, step: int, term: str, value: float = math.nan):
        self.step, self.term, self.value = step, term, value
        super().__init__(
            f"step {step}: {term} is {value} (not finite); the update was not applied. "
            "Check the input batch, the learning rates and the loss weights, then resume from the "
            "last saved state (BatchNorm running statistics may have absorbed the bad batch)."
        )


def check_finite(step: int, terms: dict[str, Tensor]) -> None:
    """Raises `NonFiniteError` naming the first non-finite term. One host sync when all is well.

    Call it with globally reduced values only, so that every process takes the same decision.
    """
    values = torch.stack([t.detach().reshape(()) for t in terms.values()])  # promotes dtypes
    if bool(torch.isfinite(values).all()):
        return
    for name, v in zip(terms, values.tolist()):
        if not math.isfinite(v):
            raise NonFiniteError(step, name, v)


# ----------------------------------------------------------------------------- BN / dropout modes


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[nn.Module]:
    """BatchNorm layers keep their mode but do not update running statistics.

    Setting ``track_running_stats = False`` makes a training-mode BN use batch statistics and
    pass no running buffers to the kernel, so neither the running mean/var nor
    ``num_batches_tracked`` can change (not even through NaN * 0).
    """
    bns = _batch_norms(model)
    saved = [m.track_running_stats for m in bns]
    try:
        for m in bns:
            if m.training:
                m.track_running_stats = False
        yield model
    finally:
        for m, t in zip(bns, saved):
            m.track_running_stats = t


@contextlib.contextmanager
def measurement_mode(model: nn.Module, feedback_bn: str) -> Iterator[nn.Module]:
    """Deterministic mode for the student's labelled-loss measurements CE_old and CE_new.

    Every module is put in eval mode (dropout and any other `self.training`-dependent noise
    off). BatchNorm then uses either its running statistics (``"eval"``) or the batch
    statistics of the measured batch (``"batch"``) without updating the running buffers. Both
    measurements of one step therefore see identical conditions, so h is exactly 0 when the
    student's parameters did not change (DESIGN §5; reference §7 item 5). All flags are
    restored on exit.
    """
    if feedback_bn not in ("eval", "batch"):
        raise ValueError(f"feedback_bn must be 'eval' or 'batch', got {feedback_bn!r}")
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        if feedback_bn == "batch":
            for m in _batch_norms(model):
                m.train()
        with frozen_bn_stats(model):
            yield model
    finally:
        for m, training in modes:
            m.training = training


# ----------------------------------------------------------------------------- pseudo labels


def draw_pseudo_labels(logits: Tensor, kind: str, generator: torch.Generator | None = None) -> Tensor:
    """The student's target from the teacher's logits (detached), temperature 1, no threshold.

    "sample": y ~ Categorical(softmax) (the paper; unbiased REINFORCE, reference §7 item 16);
    "argmax": the most likely class; "soft": the probabilities themselves (N, K).
    `generator` must live on the logits' device (a CUDA generator for CUDA logits).
    """
    probs = torch.softmax(logits.detach(), dim=-1)
    if kind == "sample":
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    if kind == "argmax":
        return probs.argmax(dim=-1)
    if kind == "soft":
        return probs
    raise ValueError(f"pseudo_labels must be 'sample', 'argmax' or 'soft', got {kind!r}")


# ----------------------------------------------------------------------------- data classes

_M, _O, _S = MethodConfig, OptimConfig, ScheduleConfig  # the recipe's defaults are the only defaults


@dataclass(frozen=True)
class MPLHyper:
    """Hyper-parameters of every training step.

    The defaults are the recipe's defaults (`mpltools.config`: `[method]`, `[teacher]`/`[student]`
    and `[schedule]`), so a step built from Python and one built from a recipe agree unless told
    otherwise; the authors' CIFAR-10-4K values (reference §2.1) are in `recipes/cifar10_4k.toml`.
    The teacher and the student share `momentum`, `nesterov` and `max_grad_norm` (the recipe's
    `[student]` values; `preflight.check_recipe` refuses different `[teacher]` ones).
    The values are checked once, where a recipe is loaded (`config`, then `preflight`); a step built
    from Python takes them as given.

    Learning rates are *effective* values (the authors' ``base_lr * B / 256`` already applied).
    Steps are global steps; only the teacher's update advances them (reference §7 item 8).
    """

    total_steps: int = _S.steps  # N; cosine/linear schedules reach 0 here
    teacher_lr: float = _O.lr
    teacher_warmup: int = _O.warmup_steps  # linear warm-up steps of the teacher
    student_lr: float = _O.lr  # also the lr of the single network of the baselines
    student_warmup: int = _O.warmup_steps
    student_wait: int = _O.wait_steps  # student lr is 0 for this many steps (MPL only)
    lr_schedule: str = _S.lr_schedule  # "cosine" | "constant" | "linear" after warm-up
    momentum: float = _O.momentum
    nesterov: bool = _O.nesterov
    teacher_weight_decay: float = _O.weight_decay  # coupled L2 added to the gradient, before clipping
    student_weight_decay: float = _O.weight_decay
    max_grad_norm: float | None = _O.max_grad_norm or None  # global-norm clipping for both networks; None = off
    label_smoothing: float = _M.label_smoothing  # teacher supervised CE and student pseudo-label CE only
    uda_temperature: float = _M.uda_temperature
    uda_threshold: float = _M.uda_threshold  # on the sharpened weak-view distribution
    uda_weight: float = _M.uda_weight
    uda_ramp_steps: int = _M.uda_ramp_steps  # linear ramp of the UDA weight from 0
    teacher_supervised_weight: float = _M.teacher_supervised_weight
    pseudo_labels: str = _M.pseudo_labels  # "sample" (paper) | "argmax" | "soft" (exact meta-gradient)
    pseudo_label_view: str = _M.pseudo_label_view  # teacher view whose prediction labels the student
    student_view: str = _M.student_view  # unlabelled view the student learns on ("strong": the paper's)
    feedback: str = _M.feedback  # h = "taylor" CE_old - CE_new | "dot" eta <g_l', g_u> | "cosine" cos(g_l', g_u)
    baseline: bool = _M.baseline  # subtract a moving average of h (REINFORCE baseline)
    baseline_decay: float = _M.baseline_decay
    feedback_bn: str = _M.feedback_bn  # student BN during CE_old/CE_new: "batch" stats of x_l | "eval"
    ema_decay: float = _O.ema_decay  # student EMA; 0 = off (the trainer builds `EMA` from this)
    teacher_weak_no_grad: bool = _M.teacher_weak_no_grad  # weak view in a separate no-grad teacher forward
    mpl_weight: float = _M.mpl_weight  # multiplier of the feedback term; 0 = UDA teacher + distillation
    feedback_sign: float = float(_M.feedback_sign)  # +1 the paper's sign; -1 the flipped ablation (studies only)
    fixmatch_threshold: float = _M.fixmatch_threshold  # FixMatch baseline: confidence threshold tau on the weak view
    fixmatch_weight: float = _M.fixmatch_weight  # FixMatch baseline: lambda_u


def hyper_from(recipe: Recipe) -> MPLHyper:
    """The step's hyper-parameters from a recipe's [method], [teacher], [student] and [schedule] (checked when the
    recipe was loaded: `config` for types, choices and ranges, `preflight.check_recipe` for the rules between keys)."""
    m, t, s = recipe.method, recipe.teacher, recipe.student
    return MPLHyper(
        total_steps=recipe.schedule.steps,
        lr_schedule=recipe.schedule.lr_schedule,
        teacher_lr=t.lr,
        teacher_warmup=t.warmup_steps,
        teacher_weight_decay=t.weight_decay,
        student_lr=s.lr,
        student_warmup=s.warmup_steps,
        student_wait=s.wait_steps,
        student_weight_decay=s.weight_decay,
        momentum=s.momentum,
        nesterov=s.nesterov,
        max_grad_norm=s.max_grad_norm or None,
        ema_decay=s.ema_decay,
        label_smoothing=m.label_smoothing,
        uda_temperature=m.uda_temperature,
        uda_threshold=m.uda_threshold,
        uda_weight=m.uda_weight,
        uda_ramp_steps=m.uda_ramp_steps,
        teacher_supervised_weight=m.teacher_supervised_weight,
        pseudo_labels=m.pseudo_labels,
        pseudo_label_view=m.pseudo_label_view,
        student_view=m.student_view,
        feedback=m.feedback,
        baseline=m.baseline,
        baseline_decay=m.baseline_decay,
        feedback_bn=m.feedback_bn,
        teacher_weak_no_grad=m.teacher_weak_no_grad,
        mpl_weight=m.mpl_weight,
        feedback_sign=m.feedback_sign,
        fixmatch_threshold=m.fixmatch_threshold,
        fixmatch_weight=m.fixmatch_weight,
    )


@dataclass
class Networks:
    """The trained state a step mutates in place.

    `teacher`/`teacher_opt` are None for the supervised and UDA baselines; the pseudo-label
    baseline has a teacher but no `teacher_opt`. Under fp16 each trained network has a loss scaler. `baseline` is the moving average of h, a 0-dim
    tensor on the student's device started at 0 (TF drew it from U(-1.73, 1.73) by accident,
    reference §1.5, §7 item 3). The no-decay name sets record which parameters the optimisers
    (built by `build_sgd`) exclude from weight decay; the steps read the decay from the
    optimisers' param groups.
    """

    teacher: nn.Module | None
    student: nn.Module
    teacher_opt: torch.optim.Optimizer | None
    student_opt: torch.optim.Optimizer
    ema: object | None = None  # optim.EMA of the student
    baseline: Tensor | None = None
    teacher_no_decay: frozenset[str] = field(default_factory=frozenset)
    student_no_decay: frozenset[str] = field(default_factory=frozenset)
    teacher_scaler: LossScaler | None = None  # fp16 loss scaling (`precision.LossScaler`); None otherwise
    student_scaler: LossScaler | None = None

    def __post_init__(self) -> None:
        if self.baseline is None:
            p = next(self.student.parameters())
            self.baseline = torch.zeros((), device=p.device, dtype=p.dtype)


@dataclass
class Batch:
    """One step's local batch. Unlabelled views may be None for the supervised baseline.

    `unlabeled_weak[i]` and `unlabeled_strong[i]` are two views of the same image.
    Reduced MPL: `teacher_labeled`/`teacher_unlabeled` are what the teacher reads instead of the
    images (a large teacher's stored logits, row i for image i); the same for both views.
    """

    labeled_x: Tensor
    labeled_y: Tensor  # int64 class indices
    unlabeled_weak: Tensor | None = None
    unlabeled_strong: Tensor | None = None
    teacher_labeled: Tensor | None = None
    teacher_unlabeled: Tensor | None = None
    unlabeled_y: Tensor | None = None  # hidden true labels of the unlabelled images: diagnostics only, never trained on

    def unlabeled(self, view: str) -> Tensor:
        """The unlabelled images of `view` ("strong" or "weak")."""
        return self.unlabeled_strong if view == "strong" else self.unlabeled_weak

    def for_teacher(self) -> Batch:
        """The batch as the teacher sees it: its own inputs in place of the images, if it has any."""
        if self.teacher_labeled is None:
            return self
        return replace(
            self, labeled_x=self.teacher_labeled, unlabeled_weak=self.teacher_unlabeled, unlabeled_strong=self.teacher_unlabeled
        )


def trainable(model: nn.Module) -> list[Tensor]:
    """The parameters a step updates (those with ``requires_grad``)."""
    return [p for p in model.parameters() if p.requires_grad]
