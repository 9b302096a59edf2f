"""`mpl train RECIPE`: Meta Pseudo Labels (or a baseline) with checkpoints, resume and metrics.

The recipe is already resolved (recipe < --set < --seed) by the CLI; the loop is `trainer.fit`.
Re-running the same command on the same run folder resumes from its newest committed state.
"""

from __future__ import annotations

from pathlib import Path

from mpltools import trainer
from mpltools.config import Recipe


def run(recipe: Recipe, out: Path, *, force: bool, command: str) -> dict:
    return trainer.fit(recipe, out, force=force, command=command)
