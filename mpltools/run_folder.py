"""The run folder of `mpl train`, `finetune` and `reduced train`: created, or re-opened to resume a run of the
same recipe; its `recipe.toml` and its history of starts, `run.json`. (A failed new run is removed by
`run_cleanup.RunFolderGuard`; resume states are `resume.py`'s.)
"""

from __future__ import annotations

import json
from pathlib import Path

from mpltools import log
from mpltools.checkpoint import latest_state
from mpltools.config import Recipe, to_toml
from mpltools.errors import MplError, UsageError

# Settings that may change between a run and its resumption (they do not change the maths).
_RESUMABLE_DIFFERENCES = {
    ("runtime", "log_every"),
    ("runtime", "threads"),
    ("data", "workers"),
    ("data", "prefetch_mb"),
    ("runtime", "tensorboard"),
    ("runtime", "trackers"),
    ("runtime", "tracker_project"),
    ("runtime", "tracker_entity"),
    ("runtime", "tracker_run_name"),
    ("runtime", "tracker_tags"),
    ("checkpoint", "every"),
    ("checkpoint", "keep_last"),
    ("eval", "every"),
    ("eval", "batch_size"),
    ("runtime", "channels_last"),
}


def prepare_run_folder(out: Path, recipe: Recipe, force: bool, is_main: bool, barrier=lambda: None) -> Path | None:
    """Create or re-open a run folder; return the state to resume from (None = fresh start).

    Every process decides from the folder as it was, then `barrier()` (the processes' barrier), then the main process
    alone empties (--force) and writes it: a process that looked while the main process was writing would find a
    folder half made (no recipe.toml yet) and refuse it, or refuse a folder --force is about to empty."""
    out = Path(out)
    _refuse_a_file(out)
    action = "restart" if force and out.exists() else check_run_folder(out, recipe)
    barrier()
    if is_main and action == "restart":
        import shutil

        shutil.rmtree(out)
    if action == "resume":
        return latest_state(out)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        _write_text(out / "recipe.toml", to_toml(recipe))
    return None


def check_run_folder(out: Path, recipe: Recipe) -> str:
    """What `train` would do with the run folder, writing nothing: resume (a run of this recipe) or start new
    (absent or empty); another recipe's run or a foreign folder is refused."""
    out, saved = Path(out), Path(out) / "recipe.toml"
    _refuse_a_file(out)
    if out.exists() and saved.is_file():
        import tomllib

        try:
            old = tomllib.loads(saved.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            if latest_state(out) is not None:
                raise MplError(
                    f"{saved} is damaged (a kill while it was written?) but {out} holds resume states; "
                    "restore it, or pass --force to start the run over."
                ) from None
            return "new"  # killed before the first state: nothing to lose, start afresh (recipe.toml is rewritten)
        new, defaults = recipe.to_dict(), type(recipe)().to_dict()
        diffs = [
            f"{s}.{k}: {old.get(s, {}).get(k)!r} -> {v!r}"
            for s, values in new.items()
            for k, v in values.items()
            if old.get(s, {}).get(k) != v
            and (s, k) not in _RESUMABLE_DIFFERENCES
            and not (k not in old.get(s, {}) and v == defaults[s][k])  # a key newer than the run, at its default
        ]
        if diffs:
            raise UsageError(
                f"{out} holds a run with a different recipe ({'; '.join(diffs[:4])}); "
                "use another --out, or --force to start that run over."
            )
        return "resume"
    if out.exists() and any(out.iterdir()):
        raise MplError(f"{out} exists and is not a run folder; choose another --out or pass --force.")
    return "new"


def _refuse_a_file(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise MplError(f"{out} is a file, not a run folder; choose another --out (--force does not replace a file).")


def _write_text(path: Path, text: str) -> None:
    from mpltools.atomic import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_run_info(out: Path, info: dict) -> None:
    path = Path(out) / "run.json"
    try:
        history = json.loads(path.read_text()) if path.is_file() else []
    except (json.JSONDecodeError, UnicodeDecodeError):
        history = None
    if not isinstance(history, list):  # empty or partial after a kill: the run's history restarts here
        log.warn(f"{path} was damaged (a kill while it was written?); starting its history afresh.")
        history = []
    history.append(info)
    _write_text(path, json.dumps(history, indent=1) + "\n")
    log.info(f"run folder {out}")


def start_record(command: str, start_step: int, runtime, seed: int) -> dict:
    """One start of the run as `run.json` lists it: the command line, the step it starts from, where it runs, versions."""
    import platform

    import torch

    from mpltools import __version__

    return {
        "command": command,
        "start_step": start_step,
        "world_size": runtime.world,
        "device": str(runtime.device),
        "mixed_precision": runtime.mixed_precision,
        "mpltools": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seed": seed,
    }
