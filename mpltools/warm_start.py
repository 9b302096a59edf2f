"""Warm starts: `mpl train RECIPE --out NEW --init-from SOURCE` starts a NEW run whose networks begin where
another run's ended, under a recipe that may differ (more steps, another schedule, other learning rates).

A SOURCE is a run folder (its newest committed resume state), one state `RUN/state/step_N`, or exchanged
checkpoints (`--init-from` repeated: a checkpoint of role "teacher" starts the teacher, any other the student).
From a state the student and the teacher are loaded; `optimizers` adds the optimisers, the feedback baseline,
the EMA and the fp16 loss scalers (else the EMA restarts from the loaded student). The step counter restarts at
0, so the new recipe's warm-up and decay run from their start; `continue_schedule` starts at the state's step
instead (the recipe's schedule, evaluated from there: what extending `schedule.steps` of the same recipe
means). RNGs come from the new recipe's seed. Every mismatch (architecture, class set, shapes) is refused
before training, naming the file (exit 1); the provenance (path, step, sha256) goes into run.json and the
exported checkpoints' metadata (`extra.init_from`).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from mpltools import log
from mpltools.checkpoint import MARKER, CheckpointMeta, file_sha256, latest_state, load_optimizer_tensors, load_state
from mpltools.config import TWO_NETWORKS, Recipe
from mpltools.errors import MplError, UsageError
from mpltools.methods.common import Networks
from mpltools.methods.optim import EMA


@dataclass(frozen=True)
class Source:
    """One file or state a warm start reads: its kind ("state" or "checkpoint"), path, step, sha256 and, for a
    checkpoint, the network it starts ("student" or "teacher") and its metadata."""

    kind: str
    path: Path
    step: int
    sha256: str
    role: str = ""
    meta: CheckpointMeta | None = None

    def provenance(self) -> dict:
        out = {"kind": self.kind, "path": str(self.path), "step": self.step, "sha256": self.sha256}
        return {**out, "network": self.role} if self.role else out


@dataclass(frozen=True)
class WarmStart:
    sources: tuple[Source, ...]
    optimizers: bool = False
    continue_schedule: bool = False

    @property
    def start_step(self) -> int:
        return self.sources[0].step if self.continue_schedule else 0

    def provenance(self) -> dict:
        """What run.json's start record and the exported checkpoints' `extra` record."""
        return {
            "init_from": [s.provenance() for s in self.sources],
            "init_optimizers": self.optimizers,
            "continue_schedule": self.continue_schedule,
        }


def plan(given: list[Path], recipe: Recipe, out: Path, *, force: bool, optimizers: bool, continue_schedule: bool) -> WarmStart:
    """Resolve the `--init-from` arguments and check the combination (usage errors exit 2, bad files exit 1)."""
    sources = tuple(_source(Path(p).absolute()) for p in given)
    states = [s for s in sources if s.kind == "state"]
    if states and len(sources) > 1:
        raise UsageError("--init-from takes one run folder or state, or checkpoints (a student and a teacher), not both.")
    if not states and (optimizers or continue_schedule):
        flag = "--init-optimizers" if optimizers else "--continue-schedule"
        raise UsageError(f"{flag} needs a run folder or state as --init-from: a checkpoint holds weights only.")
    roles = [s.role for s in sources if s.kind == "checkpoint"]
    for role in ("student", "teacher"):
        if roles.count(role) > 1:
            raise UsageError(f"--init-from names two {role} checkpoints; give one student and at most one teacher.")
    if "teacher" in roles and recipe.method.name not in TWO_NETWORKS:
        raise UsageError(f"--init-from gives a teacher, but method {recipe.method.name!r} trains none.")
    if continue_schedule and sources[0].step >= recipe.schedule.steps:
        raise UsageError(
            f"--continue-schedule: {sources[0].path} is at step {sources[0].step} and the recipe ends at "
            f"schedule.steps = {recipe.schedule.steps}; raise schedule.steps."
        )
    target = Path(out).resolve()
    if force and any(s.path.resolve() == target or target in s.path.resolve().parents for s in sources):
        raise UsageError(f"--force would delete {out}, which holds the --init-from source; choose another --out.")
    return WarmStart(sources, optimizers, continue_schedule)


def _source(path: Path) -> Source:
    if path.is_file():
        from mpltools.checkpoint import read_checkpoint

        _, meta = read_checkpoint(path)
        if meta.role == "reduced_teacher":
            raise MplError(f"{path} is a reduced teacher (it reads stored predictions); a warm start needs a student or teacher.")
        role = "teacher" if meta.role == "teacher" else "student"
        return Source("checkpoint", path, meta.step, file_sha256(path), role, meta)
    if (path / MARKER).is_file():
        state = path
    elif path.is_dir() and (path / "state").is_dir() and latest_state(path) is not None:
        state = latest_state(path)
    else:
        raise MplError(f"--init-from {path}: not a checkpoint, a run folder with a committed state, or a committed state.")
    step = int(json.loads((state / "state.json").read_text(encoding="utf-8"))["step"])
    return Source("state", state, step, state_sha256(state))


def state_sha256(folder: Path) -> str:
    """A state folder's digest: the sha256 of the lines `<sha256 of file>  <file name>` of its files in name order
    (what `cd STATE && sha256sum * | sha256sum` prints with LC_ALL=C)."""
    lines = "".join(f"{file_sha256(f)}  {f.name}\n" for f in sorted(Path(folder).iterdir(), key=lambda p: p.name) if f.is_file())
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def check(warm: WarmStart, recipe: Recipe, data) -> None:
    """Before the run folder is written: each source's architecture and class set fit the recipe and the data
    (the tensors' shapes are checked again as they are loaded)."""
    from mpltools.checkpoint import check_compatible
    from mpltools.networks import teacher_architecture

    for s in warm.sources:
        if s.kind == "checkpoint":
            want = (recipe.model.name, recipe.model.kwargs) if s.role == "student" else teacher_architecture(recipe.model)
            _same_architecture(s.path, (s.meta.architecture, s.meta.architecture_kwargs), want, s.role)
            check_compatible(s.meta, data.num_classes, data.input_spec.to_json(), s.path, str(data.labeled.root))
            if list(s.meta.classes) != list(data.classes):
                raise MplError(
                    f"{s.path} was trained on the classes {s.meta.classes[:6]} but {data.labeled.root} has "
                    f"{data.classes[:6]}; a warm start needs the same label set in the same order."
                )
            continue
        source_recipe = _source_recipe(s.path)
        model = source_recipe.get("model", {})
        have = (model.get("name"), model.get("kwargs", {}))
        _same_architecture(s.path, have, (recipe.model.name, recipe.model.kwargs), "student")


def _same_architecture(path: Path, have: tuple, want: tuple, role: str) -> None:
    if (have[0], dict(have[1])) != (want[0], dict(want[1])):
        raise MplError(
            f"{path}: its {role} is {have[0]} {dict(have[1])}, the recipe builds {want[0]} {dict(want[1])}; "
            "a warm start needs the same architecture."
        )


def _source_recipe(state: Path) -> dict:
    path = state.parent.parent / "recipe.toml"
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MplError(f"{state}: its run's {path} cannot be read ({exc}); it tells the state's architecture.") from None


def recorded(out: Path) -> dict:
    """The warm start a run folder was begun with, as its run.json records it ({} for a run begun from scratch)."""
    try:
        history = json.loads((Path(out) / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    for start in history if isinstance(history, list) else []:
        if isinstance(start, dict) and "init_from" in start:
            return {k: start[k] for k in ("init_from", "init_optimizers", "continue_schedule") if k in start}
    return {}


def resuming(out: Path, warm: WarmStart) -> None:
    """`--init-from` on a run folder that already holds a state: the same command re-run after an interruption
    (the folder was begun from the same sources) resumes it; anything else is refused (exit 2)."""
    begun = [(s.get("kind"), s.get("path")) for s in recorded(out).get("init_from", [])]
    if begun != [(s.kind, str(s.path)) for s in warm.sources]:
        raise UsageError(
            f"{out} already holds a run (begun {'from ' + begun[0][1] if begun else 'from scratch'}); --init-from starts "
            "a new run: choose another --out, or re-run without --init-from to resume this one."
        )
    log.info(f"{out} was begun from {', '.join(p for _, p in begun)}: resuming it (the warm start is not applied again).")


def apply(warm: WarmStart, nets: Networks, ema_decay: float) -> None:
    """Load the sources into the freshly built `nets`; a tensor that does not fit is refused naming the file."""
    for s in warm.sources:
        if s.kind == "checkpoint":
            from mpltools.checkpoint import read_checkpoint

            net = nets.student if s.role == "student" else nets.teacher
            _load(net, read_checkpoint(s.path)[0], s.path, s.role)
        else:
            _apply_state(s.path, nets, warm.optimizers)
    if nets.ema is not None and not (warm.optimizers and _has_ema(warm)):
        nets.ema = EMA(nets.student, ema_decay)  # the shadow starts from the loaded student
    log.info("warm start from " + ", ".join(f"{s.path} (step {s.step})" for s in warm.sources))


def _has_ema(warm: WarmStart) -> bool:
    return any(s.kind == "state" and (s.path / "ema.safetensors").is_file() for s in warm.sources)


def _apply_state(folder: Path, nets: Networks, optimizers: bool) -> None:
    groups, scalars = load_state(folder)
    _load(nets.student, groups["student"], folder / "student.safetensors", "student")
    if nets.teacher_opt is not None:  # a trained teacher (not pseudo-label's fixed one)
        if "teacher" in groups:
            _load(nets.teacher, groups["teacher"], folder / "teacher.safetensors", "teacher")
        else:
            log.warn(f"{folder} has no teacher: the teacher starts from scratch.")
    elif "teacher" in groups:
        log.info(f"the recipe trains no teacher: the teacher of {folder} is not used.")
    if not optimizers:
        return
    try:
        load_optimizer_tensors(nets.student_opt, groups["student_opt"])
        if nets.teacher_opt is not None and "teacher_opt" in groups:
            load_optimizer_tensors(nets.teacher_opt, groups["teacher_opt"])
    except (IndexError, KeyError, ValueError) as exc:
        raise MplError(f"{folder}: its optimiser state does not fit the recipe's optimisers ({exc}).") from None
    nets.baseline.copy_(groups["baseline"]["baseline"].reshape(()))
    if nets.ema is not None and "ema" in groups:
        _load_ema(nets, groups["ema"], folder)
    scalers = scalars.get("loss_scalers", {})
    for name, scaler in (("teacher", nets.teacher_scaler), ("student", nets.student_scaler)):
        if scaler is not None and name in scalers:
            scaler.load_state_dict(scalers[name])


def _load_ema(nets: Networks, tensors: dict, folder: Path) -> None:
    try:
        nets.ema.load_state_dict(tensors)
    except (KeyError, RuntimeError) as exc:
        raise MplError(f"{folder / 'ema.safetensors'} does not fit the recipe's student ({exc}).") from None


def _load(net, tensors: dict, path: Path, role: str) -> None:
    try:
        net.load_state_dict(tensors)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise MplError(
            f"{path}: its {role} weights do not fit the recipe's network ({first[0].strip()}); a warm start needs "
            "the same architecture, class count and input shape."
        ) from None
