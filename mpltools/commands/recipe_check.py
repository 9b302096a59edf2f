"""`mpl recipes validate`: every check `mpl train` makes before it writes anything, none of the work.

The recipe is loaded and validated (types, ranges, cross-field rules), the networks' names and
arguments are checked against the model registry and the networks are built on the meta device
(no memory, even for EfficientNet-L2), the data paths must be shard sets with manifests whose
classes and inputs agree, and a checkpoint the recipe names must be readable and fit the data.
Every problem exits 2 with a message that names the recipe key.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from mpltools.config import TWO_NETWORKS, Recipe
from mpltools.errors import MplError, UsageError
from mpltools.preflight import check_trackers, check_training, collect
from mpltools.recipe_files import locate

__all__ = ["check", "render"]

_ACTIONS = {"new": "a new run", "resume": "resumes the run there", "restart": "deleted and started over (--force)"}


def _networks(recipe: Recipe) -> list[tuple[str, str, str, dict]]:
    """(role, recipe key, name, kwargs) of the networks `train` builds, resolved as the trainer does."""
    from mpltools.networks import teacher_architecture

    m = recipe.model
    nets = [("student", "model.name", m.name, dict(m.kwargs))]
    if recipe.method.name in TWO_NETWORKS:
        name, kwargs = teacher_architecture(m)
        nets.append(("teacher", "model.teacher_name" if m.teacher_name else "model.name", name, dict(kwargs)))
    return nets


def _data_report(recipe: Recipe, faults) -> dict:
    """Each data key the run reads, opened as `train` opens it (`train_data.open_key`): its size; each one that cannot
    be opened is a fault of its own."""
    from mpltools.train_data import data_keys, open_key

    report = {}
    for key, location, purpose in data_keys(recipe, recipe.method.name != "supervised"):
        try:
            shards = open_key(key, location, purpose)
        except MplError as exc:
            faults.add(key, exc.message)
            continue
        report[key] = {"path": location, "samples": shards.num_samples, "classes": shards.num_classes}
    return report


def _network_report(recipe: Recipe, data, source: str, reduced: bool) -> dict:
    """The networks `train` builds, built on the meta device (no memory): their names, kwargs and sizes."""
    import torch

    from mpltools.networks import build_network

    networks = {}
    with torch.device("meta"):
        for role, key, name, kwargs in _networks(recipe):
            shape = (data.num_classes,) if role == "teacher" and reduced else None
            try:
                net = build_network(name, kwargs, data, input_shape=shape)
            except MplError as exc:
                raise UsageError(f"{source}: {key} = {name!r} ({role}): {exc.message}") from None
            networks[role] = {"name": name, "kwargs": kwargs, "parameters": sum(p.numel() for p in net.parameters())}
    return networks


def check(
    path: Path | None, overrides: list[str] = (), seed: int | None = None, out: Path | None = None, force: bool = False
) -> dict:
    """`out` is the run folder `train` would use (default runs/<recipe name>, as `mpl train`)."""
    import os

    from mpltools.run_folder import check_run_folder
    from mpltools.train_data import open_data

    path = locate(path) if path is not None else None
    recipe, faults = collect(path, list(overrides), seed=seed)
    source = str(path) if path is not None else "defaults"
    try:  # like `train`: an unknown tracker or a missing tracker package is named before any data is opened
        check_trackers(recipe)
    except MplError as exc:
        faults.add("runtime.trackers", exc.message)
    data_report = _data_report(recipe, faults)  # independent of the faults above: all of them are reported
    faults.raise_if_any()
    method = recipe.method.name
    reduced = recipe.model.teacher_name == "reduced_teacher"
    try:
        member = ""
        if reduced:  # `mpl reduced train`: both sets must be prediction sets of one large teacher
            from mpltools.commands import reduced as reduced_command

            _, _, member = reduced_command.check_inputs(recipe)
    except MplError as exc:
        raise UsageError(f"{source}: {exc.message}") from None

    try:
        data = open_data(recipe, need_unlabeled=method != "supervised")
    except MplError as exc:
        raise UsageError(f"{source}: {exc.message}") from None
    networks = _network_report(recipe, data, source, reduced)

    # What `trainer.fit` checks before it writes (preflight.check_training), the same function, as one process of
    # WORLD_SIZE that logs nothing.
    try:
        plan, metas = check_training(
            recipe,
            data,
            SimpleNamespace(world=int(os.environ.get("WORLD_SIZE", "1")), is_main=False),
            None,
            (member,) if member else (),
        )
    except MplError as exc:
        raise UsageError(f"{source}: {exc.message}") from None
    checkpoints = {
        key: {"path": recipe.method.teacher_checkpoint, "architecture": meta.architecture, "role": meta.role}
        for key, meta in metas.items()
    }
    run_dir = Path(out) if out is not None else Path("runs") / (Path(path).stem if path is not None else "defaults")
    try:
        action = "restart" if force and run_dir.exists() else check_run_folder(run_dir, recipe)
    except MplError as exc:
        raise UsageError(f"{source}: {exc.message}") from None
    return {
        "recipe": source,
        "ok": True,
        "method": method,
        "command": "mpl reduced train" if reduced else "mpl train",
        "data": data_report,
        "networks": networks,
        "checkpoints": checkpoints,
        "run_folder": {"path": str(run_dir), "action": action},
        "loaders": plan.describe(),
    }


def render(report: dict) -> str:
    lines = [f"{report['recipe']}: ok ({report['method']}; run it with `{report['command']}`)"]
    for key, d in report["data"].items():
        lines.append(f"  {key}: {d['path']} ({d['samples']} samples, {d['classes']} classes)")
    for role, n in report["networks"].items():
        lines.append(f"  {role}: {n['name']} ({n['parameters']:,} parameters)")
    for key, c in report["checkpoints"].items():
        lines.append(f"  {key}: {c['path']} ({c['role']}, {c['architecture']})")
    run = report["run_folder"]
    lines.append(f"  run folder: {run['path']} ({_ACTIONS[run['action']]})")
    return "\n".join(lines)
