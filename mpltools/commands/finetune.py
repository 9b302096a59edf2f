"""`mpl finetune CKPT --labeled SHARDS`: the paper's last phase, the student trained on labels only.

Settings come from the checkpoint's own recipe ([finetune] section), replaced by `--recipe`'s
[finetune] section when given, then by `--set finetune.key=value`. The architecture comes from
the checkpoint's metadata. The output folder holds `finetuned.safetensors` (role "finetuned",
with the parent checkpoint's sha256), metrics and resume states; re-running resumes.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from mpltools import preflight, trainer
from mpltools.checkpoint import file_sha256, read_checkpoint
from mpltools.config import apply_overrides, from_dict, resolve, validate_finetune
from mpltools.errors import UsageError


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
        try:
            given = tomllib.loads(Path(recipe_path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"cannot read recipe {recipe_path}: {exc}") from None
        raw["finetune"] = {**raw.get("finetune", {}), **given.get("finetune", {})}
    raw = apply_overrides(raw, overrides)
    base = from_dict(raw, "finetune settings")
    validate_finetune(base, "finetune settings")
    ft = base.finetune
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
    recipe = resolve(raw, source="finetune settings")
    preflight.check_recipe(recipe, "finetune settings")
    out = Path(out) if out else Path(checkpoint).parent / "finetune"
    finetuned = trainer.Output(
        "finetuned.safetensors",
        "finetuned",
        extra={"parent_role": meta.role, "parent_step": meta.step, "finetune_steps": ft.steps},
        parent_sha256=file_sha256(Path(checkpoint)),
    )
    report = trainer.fit(recipe, out, force=force, command=command, init_student=Path(checkpoint), student=finetuned)
    report["finetuned"] = report.pop("student", None)
    return report
