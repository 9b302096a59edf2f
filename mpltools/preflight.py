"""Preflight: check everything a command will need before it writes its first byte.

`load_and_check` is how every training command, `mpl recipes validate` and `mpltools.load_recipe` /
`validate_recipe` get a recipe: `config` types it and checks each key's range, then `check_recipe`
adds what needs more than the values (the model registry, rules between keys).
`check_teacher_kind` says which command trains a reduced teacher; `check_trackers` names a
missing tracker package before any data is opened; `check_training` checks what `trainer.fit`
is about to use (loaders, shard sets, checkpoints) before the run folder exists; `check_eval`
does the same for `mpl eval`. Every failure is an MplError naming the file or key, so the CLI
maps it to the documented exit code (2 recipe/usage, 1 bad file).
"""

from __future__ import annotations

from pathlib import Path

from mpltools import config, recipe_files, tracking
from mpltools.config import TWO_NETWORKS, Recipe
from mpltools.errors import MplError, UsageError


def load_and_check(recipe: Recipe | str | Path | None, overrides: list[str] = (), *, seed: int | None = None) -> Recipe:
    """A recipe file (None = the defaults; a shipped recipe's name), or a Recipe object, with `--set` overrides and
    `--seed`, checked as every training command checks it before it opens the data; returns the resolved recipe.
    Every independent fault is reported at once (exit 2)."""
    resolved, faults = collect(recipe, overrides, seed=seed)
    faults.raise_if_any()
    return resolved


def collect(
    recipe: Recipe | str | Path | None, overrides: list[str] = (), *, seed: int | None = None
) -> tuple[Recipe, config.Faults]:
    """`load_and_check` that returns the faults instead of raising them (`mpl recipes validate` adds the data's)."""
    if isinstance(recipe, Recipe):  # typed again as a file's tables would be
        raw, source = recipe.to_dict(), "recipe"
    elif recipe is None:
        raw, source = {}, "defaults"
    else:
        path = recipe_files.locate(recipe)
        raw, source = config.read(path), str(path)
    resolved, faults = config.resolve_faults(raw, list(overrides), seed=seed, source=source)
    check_recipe(resolved, faults)
    return resolved, faults


def check_recipe(recipe: Recipe, faults: config.Faults) -> None:
    """What a recipe needs beyond its keys' types and ranges (`config`): networks the model registry builds, and
    the rules between keys; each fault is added to `faults`."""
    m, t, s = recipe.method, recipe.teacher, recipe.student
    if m.name == "pseudo-label" and not m.teacher_checkpoint:
        faults.add(
            "method.teacher_checkpoint",
            "method pseudo-label needs method.teacher_checkpoint (a trained teacher, e.g. from a supervised run).",
        )
    if m.name in TWO_NETWORKS and (t.momentum, t.nesterov, t.max_grad_norm) != (s.momentum, s.nesterov, s.max_grad_norm):
        faults.add(
            "teacher.momentum",
            "[teacher] and [student] must share momentum, nesterov and max_grad_norm (the step applies one value to both, as the authors do).",
        )
    if m.teacher_weak_no_grad and m.pseudo_label_view == "weak" and m.mpl_weight:
        faults.add(
            "method.teacher_weak_no_grad",
            "method.teacher_weak_no_grad = true leaves the weak view without gradient, so the MPL term cannot "
            'use method.pseudo_label_view = "weak"; use "strong" or method.mpl_weight = 0.',
        )
    check_models(recipe, faults)


def check_teacher_kind(recipe: Recipe, reduced: bool) -> None:
    """The reduced teacher (model.teacher_name = "reduced_teacher") reads a large teacher's stored predictions instead of
    images: `mpl reduced train` (`reduced`) trains it with the MPL step, and no other command trains one."""
    if reduced and recipe.method.name != "mpl":
        raise UsageError(
            f'Reduced MPL trains with the MPL step: set method.name = "mpl" (the recipe says {recipe.method.name!r}).'
        )
    if reduced and recipe.model.teacher_name != "reduced_teacher":
        raise UsageError(
            'Reduced MPL needs model.teacher_name = "reduced_teacher" (an MLP over the stored predictions), '
            f"not {recipe.model.teacher_name!r}; see recipes/reduced_b7_yfcc.toml."
        )
    if not reduced and recipe.model.teacher_name == "reduced_teacher" and recipe.method.name in TWO_NETWORKS:
        raise UsageError(
            'model.teacher_name = "reduced_teacher" is the teacher of Reduced MPL, which reads a large teacher\'s '
            "stored predictions: train it with `mpl reduced train RECIPE` (see recipes/reduced_b7_yfcc.toml)."
        )


def check_trackers(recipe: Recipe) -> list[str]:
    """The trackers the recipe asks for (warning once about a deprecated key); an unknown one, or one whose package is
    missing, is refused. Run it before the data are opened."""
    names = tracking.requested(recipe.runtime)
    tracking.check(names)
    return names


def check_models(recipe, faults: config.Faults) -> None:
    """Registry lookup of every network's name and kwargs (cheap; also what --print-config checks). A teacher
    without model.teacher_name is the student's architecture, checked as model.name."""
    _check_model("model.name", "model.kwargs", recipe.model.name, recipe.model.kwargs, faults)
    if recipe.model.teacher_name:
        _check_model("model.teacher_name", "model.teacher_kwargs", recipe.model.teacher_name, recipe.model.teacher_kwargs, faults)


def _check_model(key: str, kwargs_key: str, name: str, kwargs: dict, faults: config.Faults) -> None:
    from mpltools.models.registry import MODEL_NAMES, validate_model_args

    try:
        validate_model_args(name, kwargs)
    except (ValueError, KeyError, TypeError) as exc:
        faults.add(key if name not in MODEL_NAMES else kwargs_key, f"{key} = {name!r}: {str(exc).strip(chr(39))}")


def check_nonempty(shards, what: str) -> None:
    """An empty shard set cannot be evaluated or trained on."""
    if shards is not None and shards.num_samples == 0:
        raise MplError(f"{shards.root} holds no samples; {what} needs at least one (re-create it, or point {what} elsewhere).")


def check_training(recipe: Recipe, data, runtime, init_student: Path | None = None, extras: tuple[str, ...] = ()):
    """Every check `train`, `finetune` and `reduced train` make once the data is open, before the run folder is
    written: the loaders' memory, the data sets' sizes, the checkpoints the run will load. `mpl recipes validate`
    calls exactly this (one implementation).

    `runtime` needs `.world` and `.is_main` (the loaders' plan is logged by the main process only).
    Returns (the loaders' plan, {recipe key: checkpoint metadata} of the checkpoints read)."""
    from mpltools.train_data import check_loaders

    check_normalisation(recipe, data)
    plan = check_loaders(data, recipe, runtime, recipe.method.name != "supervised", extras)
    return plan, check_run(recipe, data, init_student)


def check_normalisation(recipe: Recipe, data) -> None:
    """The normalisation's per-channel values must fit the images' channels (one value fits any)."""
    channels = data.model_input_shape[0] if data.input_spec.kind == "image" else None
    values = len(data.normalisation["mean"])
    if channels is not None and values not in (1, channels):
        raise UsageError(
            f"augment.normalisation = {recipe.augment.normalisation!r} has {values} per-channel values but "
            f"{data.labeled.root} holds {channels}-channel images; use a normalisation made for them "
            '(e.g. "none") or images with that many channels.'
        )


def check_run(recipe, data, init_student: Path | None) -> dict:
    """What `trainer.fit` will load, checked before the run folder is created; returns the checkpoints' metadata."""
    from mpltools.checkpoint import check_compatible, read_checkpoint

    check_nonempty(data.labeled, "data.labeled")
    check_nonempty(data.val, "data.val")
    spec = data.input_spec.to_json()
    classes = None if data.labeled.classes_unknown else data.classes  # a scanned set's names are label numbers
    checkpoints = {}
    if recipe.method.name == "pseudo-label":
        path = Path(recipe.method.teacher_checkpoint)
        try:
            _, meta = read_checkpoint(path)  # exists, readable, finite
            check_compatible(meta, data.num_classes, spec, path, str(recipe.data.labeled), classes=classes)
            _check_teacher_input(meta, data, path)
        except MplError as exc:
            raise MplError(f"method.teacher_checkpoint = {str(path)!r}: {exc.message}", exc.exit_code) from None
        checkpoints["method.teacher_checkpoint"] = meta
    if init_student is not None:
        _, meta = read_checkpoint(init_student)
        check_compatible(meta, data.num_classes, spec, init_student, str(data.labeled.root), classes=classes)
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
