"""`mpl finetune CKPT --labeled SHARDS`: the paper's last phase, the student trained on labels only.

Settings come from the checkpoint's own recipe ([finetune] section), replaced by `--recipe`'s
[finetune] section when given (a file or a shipped recipe's name, checked whole as `train` checks
a recipe's keys), then by `--set finetune.key=value`. The architecture comes from the checkpoint's
metadata. The run is a supervised run whose settings are copied from [finetune]; a refusal that
names one of the copies names the [finetune] key (or `--labeled`, `--val`) instead. The output folder holds `finetuned.safetensors` (role "finetuned",
with the parent checkpoint's sha256), metrics and resume states; re-running resumes.
"""

from __future__ import annotations

import re
from pathlib import Path

from mpltools import config, preflight, trainer
from mpltools.checkpoint import file_sha256, read_checkpoint
from mpltools.errors import Interrupted, MplError
from mpltools.recipe_files import locate

# The supervised run's keys that hold a copy of a [finetune] setting or of an option.
_COPIES = {
    "data.labeled": "--labeled",
    "data.val": "--val",
    "data.batch_size": "finetune.batch_size",
    "student.lr": "finetune.lr",
    "student.warmup_steps": "finetune.warmup_steps",
    "student.weight_decay": "finetune.weight_decay",
    "student.momentum": "finetune.momentum",
    "schedule.steps": "finetune.steps",
    "method.label_smoothing": "finetune.label_smoothing",
}


def run(
    checkpoint: Path,
    labeled: str,
    out: Path | None,
    recipe_path: Path | None,
    overrides: list[str],
    *,
    force: bool,
    command: str,
    val: str | None = None,
) -> dict:
    _, meta = read_checkpoint(checkpoint)
    raw = {section: dict(values) for section, values in meta.recipe.items()}
    if recipe_path is not None:
        recipe_path = locate(recipe_path)
        given = config.read(recipe_path)
        config.from_dict(given, str(recipe_path))  # every section and key a recipe may hold, typed
        raw["finetune"] = {**raw.get("finetune", {}), **given.get("finetune", {})}
    ft = _settings(raw, overrides, str(recipe_path) if recipe_path is not None else f"the recipe in {checkpoint}")
    # Finetuning = the supervised method on the labelled set, starting from the checkpoint.
    raw["model"] = {"name": meta.architecture, "kwargs": meta.architecture_kwargs}
    raw["data"] = {**raw.get("data", {}), "labeled": str(labeled), "unlabeled": "", "val": val or "", "batch_size": ft.batch_size}
    raw["method"] = {**raw.get("method", {}), "name": "supervised", "label_smoothing": ft.label_smoothing}
    raw["student"] = {
        "lr": ft.lr,
        "warmup_steps": ft.warmup_steps,
        "wait_steps": 0,
        "weight_decay": ft.weight_decay,
        "momentum": ft.momentum,
        "nesterov": ft.nesterov,
        "max_grad_norm": 0.0,
        "ema_decay": 0.0,
    }
    raw["schedule"] = {"steps": ft.steps, "lr_schedule": ft.lr_schedule}
    raw["checkpoint"] = {
        **raw.get("checkpoint", {}),
        "every": max(1, min(raw.get("checkpoint", {}).get("every", 1000), ft.steps)),
    }
    raw["eval"] = {**raw.get("eval", {}), "every": 0}
    if not ft.augment:
        raw["augment"] = {**raw.get("augment", {}), "kind": "none"}
    recipe, faults = config.resolve_faults(raw, source="finetune settings")
    preflight.check_recipe(recipe, faults)
    faults.raise_if_any()
    out = Path(out) if out else Path(checkpoint).parent / "finetune"
    finetuned = trainer.Output(
        "finetuned.safetensors",
        "finetuned",
        extra={"parent_role": meta.role, "parent_step": meta.step, "finetune_steps": ft.steps},
        parent_sha256=file_sha256(Path(checkpoint)),
    )
    try:
        report = trainer.fit(recipe, out, force=force, command=command, init_student=Path(checkpoint), student=finetuned)
    except MplError as exc:
        if isinstance(exc, Interrupted) or _in_finetune_terms(exc.message) == exc.message:
            raise
        raise MplError(_in_finetune_terms(exc.message), exc.exit_code) from None
    report["finetuned"] = report.pop("student", None)
    return report


def _settings(raw: dict, overrides: list[str], source: str) -> config.FinetuneConfig:
    """The [finetune] settings with the overrides, typed and range-checked; every fault at once."""
    faults = config.Faults(source, overrides)
    recipe = config.from_dict(config.apply_overrides(raw, overrides), source, faults)
    config.check_finetune(recipe, faults)
    faults.raise_if_any()
    return recipe.finetune


def _in_finetune_terms(message: str) -> str:
    """A refusal of the supervised run, with the [finetune] key the user sets in place of its copy."""
    return re.sub("|".join(rf"\b{re.escape(k)}\b" for k in _COPIES), lambda m: _COPIES[m.group(0)], message)
