"""Experiment trackers (TensorBoard, Weights & Biases, MLflow) through Accelerate's tracker classes.

`runtime.trackers = ["tensorboard", "wandb", "mlflow"]` picks them; the old `runtime.tensorboard = true`
is a deprecated alias of `trackers = ["tensorboard"]`. `check` runs before the run folder is written, so
a missing package fails the command at once with the extra to install. Only the main process logs.

Where W&B and MLflow file a run (`settings`): each of project, entity, run name and tags is the recipe's
`runtime.tracker_*` value, else the tracker's environment variable, else a default:

    runtime.tracker_project   WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME   default "mpltools"   (W&B project, MLflow experiment)
    runtime.tracker_entity    WANDB_ENTITY                             the account's        (W&B only)
    runtime.tracker_run_name  WANDB_NAME / MLFLOW_RUN_NAME             the run folder name
    runtime.tracker_tags      WANDB_TAGS (comma-separated)             none                 (MLflow: tags without value)
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from mpltools import log
from mpltools.errors import UsageError

# tracker name -> the module it needs (the extra of meta-pseudo-labels has the tracker's name)
KNOWN = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def requested(runtime_cfg) -> list[str]:
    """The tracker names a recipe's [runtime] asks for, in order, without duplicates."""
    names = list(runtime_cfg.trackers)
    if runtime_cfg.tensorboard:
        log.warn('runtime.tensorboard = true is deprecated; write runtime.trackers = ["tensorboard"] instead.')
        names.append("tensorboard")
    return list(dict.fromkeys(names))


def check(names: list[str]) -> None:
    """Fail with exit 2 (a recipe the machine cannot run, before anything is written) on an unknown tracker or
    one whose package is not installed; the message names the key and the extra to install."""
    for name in names:
        if name not in KNOWN:
            raise UsageError(f"runtime.trackers: unknown tracker {name!r}; choose from {', '.join(KNOWN)}.")
        if importlib.util.find_spec(KNOWN[name]) is None:
            raise UsageError(
                f"runtime.trackers includes {name!r} but the {KNOWN[name]!r} package is not installed: "
                f"pip install 'meta-pseudo-labels[{name}]' (or drop {name!r} from runtime.trackers)."
            )


class Trackers:
    """The started trackers of one run; `log` sends a record's numbers to each of them."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def log(self, record: dict, step: int) -> None:
        """The record's numbers (`final` and `step` are not: they are bool and int) at `step`."""
        values = {k: v for k, v in record.items() if isinstance(v, float)}
        for t in self.trackers:
            t.log(values, step=step)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()


def settings(runtime: dict, out: Path, environ=os.environ) -> dict:
    """Project, entity, run name and tags of a run for W&B and MLflow: the recipe's `runtime.tracker_*` value,
    else the tracker's environment variable, else the default (the module docstring has the table)."""
    folder = Path(out).name or "mpl"

    def pick(key: str, *variables: str) -> str:
        return runtime.get(key) or next((environ[v] for v in variables if environ.get(v)), "")

    tags = runtime.get("tracker_tags") or [t.strip() for t in environ.get("WANDB_TAGS", "").split(",") if t.strip()]
    return {
        "wandb": {
            "project": pick("tracker_project", "WANDB_PROJECT") or "mpltools",
            "entity": pick("tracker_entity", "WANDB_ENTITY") or None,
            "name": pick("tracker_run_name", "WANDB_NAME") or folder,
            "tags": list(tags) or None,
        },
        "mlflow": {
            "experiment_name": pick("tracker_project", "MLFLOW_EXPERIMENT_NAME") or "mpltools",
            "run_name": pick("tracker_run_name", "MLFLOW_RUN_NAME") or folder,
            "tags": {t: "" for t in tags} or None,
        },
    }


def start(names: list[str], out: Path, config: dict) -> Trackers | None:
    """Build and start the trackers (main process only). TensorBoard writes to OUT/tensorboard/; W&B and MLflow
    take their project, run name, entity and tags from `settings`."""
    if not names:
        return None
    from accelerate import tracking

    chosen = settings(config.get("runtime", {}), out)
    built = []
    for name in names:
        if name == "tensorboard":
            t = tracking.TensorBoardTracker("tensorboard", logging_dir=str(out))
        elif name == "wandb":
            wandb = chosen["wandb"]
            t = tracking.WandBTracker(wandb["project"], **{k: v for k, v in wandb.items() if k != "project" and v})
        else:
            t = tracking.MLflowTracker(**chosen["mlflow"])
            t.experiment_name = chosen["mlflow"]["experiment_name"]  # Accelerate lets the environment win over a recipe
        t.start()  # Accelerate's trackers open their writer/run in start(), not in __init__
        if name != "tensorboard":  # TensorBoard's would add a timestamped folder; recipe.toml is in the run folder
            t.store_init_configuration(_flat(config))
        built.append(t)
    log.info(f"tracking with {', '.join(names)}")
    return Trackers(built)


def _flat(config: dict, prefix: str = "") -> dict:
    """A nested recipe dict as flat `section.key` hyper-parameters of plain types (what the trackers accept)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
