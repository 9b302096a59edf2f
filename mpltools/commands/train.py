"""`mpl train RECIPE`: Meta Pseudo Labels (or a baseline) with checkpoints, resume and metrics.

The recipe is already resolved (recipe < --set < --seed) and checked by the CLI (`preflight.load_and_check`);
the loop is `trainer.fit`.
Re-running the same command on the same run folder resumes from its newest committed state.
"""

from __future__ import annotations

from pathlib import Path

from mpltools import preflight, trainer
from mpltools.config import Recipe


def run(recipe: Recipe, out: Path, *, force: bool, command: str) -> dict:
    preflight.check_teacher_kind(recipe, reduced=False)  # a reduced teacher is `mpl reduced train`'s
    return trainer.fit(recipe, out, force=force, command=command)
