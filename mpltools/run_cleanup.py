"""A failed training command leaves nothing it created.

`RunFolderGuard` wraps everything `trainer.fit` does from the creation of the run folder on.
When the command fails or is interrupted (any exception, KeyboardInterrupt included):

- a run that has committed a resume state is kept, whatever went wrong: the message says so and
  that the same command resumes it;
- a resumed run (it started from a state) never deletes anything;
- a NEW run that fails before its first committed state is removed: the run folder if this
  command created it (with the parent folders of `--out` it created, never one that existed),
  or, when `--out` was an existing folder, only the entries this command added to it.

Ctrl-C during the training loop saves a state first (DESIGN §2: exit 130 with a resumable state),
so that run is kept; Ctrl-C before the loop starts (data streams still opening) is treated like a
failure and removes the new run. Only the main process deletes. The guard also holds the run folder's
output lock (`output_lock`), so a second command on a live run folder is refused before it writes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from mpltools import log
from mpltools.atomic import missing_folders, remove_empty
from mpltools.checkpoint import latest_state
from mpltools.errors import Interrupted, MplError
from mpltools.output_lock import locked


class RunFolderGuard:
    """`with RunFolderGuard(out, force, is_main) as guard: resume_from = guard.prepared(prepare_run_folder(...)); ...`"""

    def __init__(self, out: Path, force: bool, is_main: bool):
        self.out, self.is_main, self.resuming, self.is_prepared = Path(out), is_main, False, False
        self.created = missing_folders(self.out)  # the run folder and its parents, deepest first
        # An existing folder that --force empties counts as empty: what it held is gone by the user's choice.
        self.entries = None if self.created else (set() if force else set(os.listdir(self.out)) if self.out.is_dir() else None)

    def __enter__(self) -> RunFolderGuard:
        self._lock = locked(self.out) if self.is_main else contextlib.nullcontext()
        self._lock.__enter__()  # one writer per run folder (the main process writes it)
        return self

    def prepared(self, resume_from: Path | None) -> Path | None:
        """Call with what `prepare_run_folder` returned (the state a resumed run starts from, or None)."""
        self.is_prepared, self.resuming = True, resume_from is not None
        return resume_from

    def __exit__(self, kind, exc, tb) -> bool:
        try:
            return self._clean_up(exc)
        finally:
            self._lock.__exit__(kind, exc, tb)

    def _clean_up(self, exc) -> bool:
        if exc is None or not self.is_main or self.resuming:
            return False
        state = latest_state(self.out) if self.out.is_dir() else None
        if state is not None and not self.is_prepared:
            return False  # the folder was refused as it is (another recipe's run): untouched, nothing to say
        if state is not None:
            note = (
                f"{self.out} is kept: it holds a resume state ({state.name}); fix the cause, then resume with the same command."
            )
        else:
            note = self._remove()
        if isinstance(exc, Interrupted) and state is not None:
            return False  # its message already says how to resume
        if isinstance(exc, MplError):
            exc.message = f"{exc.message} {note}" if note else exc.message
        elif note:
            log.warn(note)
        return False

    def _remove(self) -> str:
        """Delete what this new run created; return what was done, in words."""
        if not self.out.is_dir():
            remove_empty(self.created)
            return ""
        if self.entries is None:
            shutil.rmtree(self.out, ignore_errors=True)
            remove_empty(self.created)
            made = [str(p) for p in self.created[1:]]
            extra = f" and the folder(s) above it that it created ({', '.join(made)})" if made else ""
            return f"Removed the new run folder {self.out}{extra}: the run stopped before its first checkpoint."
        added = sorted(set(os.listdir(self.out)) - self.entries)
        for name in added:
            path = self.out / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
        return (
            f"Removed what the run had written to {self.out} ({', '.join(added)}): it stopped before its first checkpoint."
            if added
            else ""
        )
