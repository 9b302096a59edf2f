"""Preflight: check everything a command will need before it writes its first byte (issue 9).

`validate(recipe, command)` checks recipe values and names the key the user set; `check_run`
checks what `fit` is about to use (shard sets, checkpoints) before the run folder exists;
`check_eval` does the same for `mpl eval`. Every failure is an MplError naming the file or key,
so the CLI maps it to the documented exit code (2 recipe/usage, 1 bad file).
"""

from __future__ import annotations

from pathlib import Path

from mpltools.errors import MplError, UsageError

_NONNEG_METHOD = ("mpl_weight", "uda_weight", "teacher_supervised_weight", "uda_temperature", "uda_ramp_steps")


def validate(recipe, command: str = "train", source: str = "recipe") -> None:
    """Recipe values that `config.validate` does not cover; raise UsageError naming the key."""

    def bad(key: str, msg: str) -> UsageError:
        return UsageError(f"{source}: {key} {msg}")

    if command == "finetune":
        ft = recipe.finetune
        if ft.steps < 1:
            raise bad("finetune.steps", f"must be at least 1, not {ft.steps}.")
        if ft.batch_size < 1:
            raise bad("finetune.batch_size", f"must be at least 1, not {ft.batch_size}.")
        for key in ("lr", "weight_decay", "warmup_steps"):
            if getattr(ft, key) < 0:
                raise bad(f"finetune.{key}", f"must be >= 0, not {getattr(ft, key)}.")
        if not 0 <= ft.momentum < 1:
            raise bad("finetune.momentum", f"must be in [0, 1), not {ft.momentum}.")
        if not 0 <= ft.label_smoothing < 1:
            raise bad("finetune.label_smoothing", f"must be in [0, 1), not {ft.label_smoothing}.")
        return
    m = recipe.method
    for key in _NONNEG_METHOD:
        if getattr(m, key) < 0:
            raise bad(f"method.{key}", f"must be >= 0, not {getattr(m, key)}.")
    if not 0 <= m.uda_threshold <= 1:
        raise bad("method.uda_threshold", f"must be in [0, 1], not {m.uda_threshold}.")
    if recipe.eval.batch_size < 1:
        raise bad("eval.batch_size", f"must be at least 1, not {recipe.eval.batch_size}.")
    if recipe.eval.every < 0:
        raise bad("eval.every", f"must be >= 0, not {recipe.eval.every}.")
    if recipe.runtime.log_every < 1:
        raise bad("runtime.log_every", f"must be at least 1, not {recipe.runtime.log_every}.")
    check_models(recipe, source)


def check_models(recipe, source: str = "recipe") -> None:
    """Registry lookup of every network's name and kwargs (cheap; also what --print-config checks). A teacher
    without model.teacher_name is the student's architecture, checked as model.name."""
    _check_model("model.name", recipe.model.name, recipe.model.kwargs, source)
    if recipe.model.teacher_name:
        _check_model("model.teacher_name", recipe.model.teacher_name, recipe.model.teacher_kwargs, source)


def _check_model(key: str, name: str, kwargs: dict, source: str) -> None:
    from mpltools.models.registry import validate_model_args

    try:
        validate_model_args(name, kwargs)
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{source}: {key} = {name!r}: {str(exc).strip(chr(39))}") from None


def check_nonempty(shards, what: str) -> None:
    """An empty shard set cannot be evaluated or trained on."""
    if shards is not None and shards.num_samples == 0:
        raise MplError(f"{shards.root} holds no samples; {what} needs at least one (re-create it, or point {what} elsewhere).")


def check_training(recipe, data, runtime, init_student: Path | None = None, extras: tuple[str, ...] = ()):
    """Every check `train`, `finetune` and `reduced train` make once the data is open, before the run folder is
    written: the optimiser settings' cross-field rules, the loaders' memory, the data sets' sizes, the checkpoints
    the run will load, the trackers. `mpl recipes validate` calls exactly this (one implementation).

    `runtime` needs `.world` and `.is_main` (the loaders' plan is logged by the main process only).
    Returns (the loaders' plan, {recipe key: checkpoint metadata} of the checkpoints read)."""
    from mpltools import tracking
    from mpltools.trainer import hyper_from
    from mpltools.training import check_loaders

    hyper_from(recipe)
    plan = check_loaders(data, recipe, runtime, recipe.method.name != "supervised", extras)
    checkpoints = check_run(recipe, data, init_student)
    tracking.check(tracking.requested(recipe.runtime))
    return plan, checkpoints


def check_run(recipe, data, init_student: Path | None) -> dict:
    """What `trainer.fit` will load, checked before the run folder is created; returns the checkpoints' metadata."""
    from mpltools.checkpoint import check_compatible, read_checkpoint

    check_nonempty(data.labeled, "data.labeled")
    check_nonempty(data.val, "data.val")
    spec = data.input_spec.to_json()
    checkpoints = {}
    if recipe.method.name == "pseudo-label":
        path = Path(recipe.method.teacher_checkpoint)
        try:
            _, meta = read_checkpoint(path)  # exists, readable, finite
            check_compatible(meta, data.num_classes, spec, path, str(recipe.data.labeled), classes=data.classes)
            _check_teacher_input(meta, data, path)
        except MplError as exc:
            raise MplError(f"method.teacher_checkpoint = {str(path)!r}: {exc.message}", exc.exit_code) from None
        checkpoints["method.teacher_checkpoint"] = meta
    if init_student is not None:
        _, meta = read_checkpoint(init_student)
        check_compatible(meta, data.num_classes, spec, init_student, str(data.labeled.root), classes=data.classes)
        checkpoints["init_student"] = meta
    return checkpoints


def _check_teacher_input(meta, data, path: Path) -> None:
    """The teacher sees the student's model inputs: the shapes must agree (vector vs image, size)."""
    shape, want = list(meta.input_shape or []), list(data.model_input_shape)
    if shape and (len(shape) != len(want) or shape[0] != want[0]):
        raise MplError(
            f"{path} takes inputs of shape {shape} but the student's data {data.labeled.root} gives "
            f"{list(data.model_input_shape)}; use a teacher trained on this kind of data."
        )


def check_eval(checkpoint: Path, shards, predictions: Path | None, force: bool, batch_size: int) -> None:
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch_size}.")
    check_nonempty(shards, "--data")
    if predictions is not None and Path(predictions).exists() and not force:
        raise MplError(f"{predictions} already exists; pass --force to overwrite it, or choose another --predictions.")
