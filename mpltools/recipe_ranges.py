"""The range of every recipe key that has one, as a table: `config` checks each typed value against it.

One entry per key, so every fault names its key and its value (`student.lr must be >= 0, not -1.`).
Upper bounds stop values that would overflow what torch and numpy take (a seed is 32 bits, thread
counts are small) before anything runs. Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Rule = tuple[Callable[[Any], bool], str]

SEED_MAX = 2**32 - 1  # numpy's generators take 32-bit seeds
THREADS_MAX = 1024
WORKERS_MAX = 256
IMAGE_SIZE_MAX = 16384


def _at_least(low: float) -> Rule:
    return (lambda v: v >= low, f"at least {low}" if low else ">= 0")


def _between(low: float, high: float) -> Rule:
    return (lambda v: low <= v <= high, f"in [{low}, {high}]")


def _unit(closed: bool) -> Rule:
    return (lambda v: 0 <= v <= 1, "in [0, 1]") if closed else (lambda v: 0 <= v < 1, "in [0, 1)")


_NONNEG = _at_least(0)
_POSITIVE = _at_least(1)


def _optimiser(section: str) -> dict[str, Rule]:
    keys = {f"{section}.{k}": _NONNEG for k in ("lr", "weight_decay", "max_grad_norm", "warmup_steps")}
    keys.update({f"{section}.{k}": _unit(False) for k in ("momentum", "ema_decay")})
    return keys


RANGES: dict[str, Rule] = {
    "data.batch_size": _POSITIVE,
    "data.unlabeled_ratio": _POSITIVE,
    "data.workers": _between(0, WORKERS_MAX),
    "data.prefetch_mb": _POSITIVE,
    "data.in_memory_max_mb": _NONNEG,
    "data.shuffle_buffer": _NONNEG,
    "augment.image_size": _between(0, IMAGE_SIZE_MAX),
    "augment.num_layers": _NONNEG,
    "augment.magnitude": _NONNEG,
    "augment.translate_const": _NONNEG,
    "augment.cutout_const": _NONNEG,
    "method.baseline_decay": _unit(False),
    "method.label_smoothing": _unit(False),
    "method.uda_threshold": _unit(True),
    "method.fixmatch_threshold": _unit(True),
    "method.uda_temperature": (lambda v: v > 0, "> 0 (it divides the logits)"),
    "method.feedback_sign": (lambda v: v in (1, -1), "1 (the paper's sign) or -1 (the flipped ablation)"),
    **{
        f"method.{k}": _NONNEG
        for k in ("mpl_weight", "uda_weight", "teacher_supervised_weight", "uda_ramp_steps", "fixmatch_weight")
    },
    **_optimiser("teacher"),
    **_optimiser("student"),
    "student.wait_steps": _NONNEG,
    "student.optimizer": (
        lambda v: v == "sgd",
        '"sgd" (the one-step feedback assumes an SGD student; only [teacher] may use "adam")',
    ),
    "schedule.steps": _POSITIVE,
    "checkpoint.every": _POSITIVE,
    "checkpoint.keep_last": _POSITIVE,
    "eval.every": _NONNEG,
    "eval.batch_size": _POSITIVE,
    "runtime.seed": _between(0, SEED_MAX),
    "runtime.loss_scale_init": (lambda v: v > 0, "> 0"),
    "runtime.loss_scale_growth_interval": _POSITIVE,
    "runtime.log_every": _POSITIVE,
    "runtime.threads": _between(0, THREADS_MAX),
    "finetune.steps": _POSITIVE,
    "finetune.batch_size": _POSITIVE,
    "finetune.lr": _NONNEG,
    "finetune.weight_decay": _NONNEG,
    "finetune.warmup_steps": _NONNEG,
    "finetune.momentum": _unit(False),
    "finetune.label_smoothing": _unit(False),
}


def out_of_range(sections: dict[str, dict], *, skip: str = "", only: str = "") -> list[tuple[str, str]]:
    """(key, message) for every value outside its range; `sections` maps section -> {key: value}. `skip` leaves
    one section out, `only` checks one section alone."""
    faults = []
    for key, (ok, requirement) in RANGES.items():
        section, name = key.split(".")
        if section == skip or (only and section != only):
            continue
        value = sections[section][name]
        if not ok(value):
            faults.append((key, f"{key} must be {requirement}, not {show(value)}."))
    return faults


def show(value: Any) -> str:
    """A value as the user wrote it: -1, not -1.0; strings quoted."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)
