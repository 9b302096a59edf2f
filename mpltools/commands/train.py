"""`mpl train RECIPE`: Meta Pseudo Labels (or a baseline) with checkpoints, resume and metrics.

The recipe is already resolved (recipe < --set < --seed) and checked by the CLI (`preflight.load_and_check`);
the loop is `trainer.fit`.
Re-running the same command on the same run folder resumes from its newest committed state. `--init-from`
starts a new run from another run's state or checkpoints (`warm_start`).
"""

from __future__ import annotations

from pathlib import Path

from mpltools import preflight, trainer, warm_start
from mpltools.config import Recipe


def run(
    recipe: Recipe,
    out: Path,
    *,
    force: bool,
    command: str,
    init_from: list[Path] = (),
    init_optimizers: bool = False,
    continue_schedule: bool = False,
) -> dict:
    preflight.check_teacher_kind(recipe, reduced=False)  # a reduced teacher is `mpl reduced train`'s
    warm = None
    if init_from:
        warm = warm_start.plan(
            list(init_from), recipe, out, force=force, optimizers=init_optimizers, continue_schedule=continue_schedule
        )
    elif init_optimizers or continue_schedule:
        from mpltools.errors import UsageError

        raise UsageError("--init-optimizers and --continue-schedule go with --init-from.")
    return trainer.fit(recipe, out, force=force, command=command, warm=warm)
