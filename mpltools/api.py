"""A small Python API over the same code the `mpl` commands run.

    import mpltools
    model = mpltools.load_checkpoint("runs/tiny/digits/student.safetensors")
    probs = model.predict(images)          # (N, classes) probabilities
    model.classify(image)                  # [("3", 0.97)]: best class and its probability per input
    recipe = mpltools.load_recipe("recipes/tiny/digits.toml", ["schedule.steps=5"])
    out = mpltools.run("eval", "runs/.../student.safetensors", "--data", "data/...", "--json")
    out = mpltools.run('data info "data/my set"')  # split as a shell would; a list of arguments works too

Failures raise `mpltools.MplError` (its `exit_code` is the CLI's). Importing `mpltools` does not import
torch: this module is loaded on first use of one of its names.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mpltools import api_inputs
from mpltools.checkpoint import CheckpointMeta, load_model
from mpltools.config import Recipe
from mpltools.data import transforms
from mpltools.errors import MplError
from mpltools.preflight import load_and_check


@dataclass
class Model:
    """A checkpoint ready to predict: the network in eval mode, its metadata and its input transform."""

    net: torch.nn.Module
    meta: CheckpointMeta
    device: torch.device

    @property
    def classes(self) -> list[str]:
        return list(self.meta.classes) or [str(i) for i in range(self.meta.num_classes)]

    @property
    def transform(self) -> transforms.AugmentSpec:
        """The eval view (resize/crop) applied to images, as `mpl eval` applies it; normalisation follows."""
        return self.meta.eval_view().augment

    def inputs(self, x: Any) -> torch.Tensor:
        """A batch of model inputs from a PIL image, uint8 image data (HxWxC, or NxHxWxC), float model inputs
        (already normalised), or a list of these; prepared as `mpl eval` prepares a shard set's images.
        See mpltools/api_inputs.py for what is accepted; anything else raises MplError (exit_code 2)."""
        return api_inputs.to_batch(x, self.meta, self.device)

    @torch.no_grad()
    def predict(self, x: Any) -> torch.Tensor:
        """Class probabilities, shape (N, classes), on the CPU."""
        return torch.softmax(self.net(self.inputs(x)).float(), dim=-1).cpu()

    def classify(self, x: Any) -> list[tuple[str, float]]:
        """(best class name, its probability) for each input."""
        probs = self.predict(x)
        best = probs.argmax(dim=-1)
        return [(self.classes[i], float(probs[n, i])) for n, i in enumerate(best.tolist())]


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Model:
    """Rebuild a `mpl train`/`finetune` checkpoint (.safetensors) from its metadata, in eval mode."""
    net, meta = load_model(path, device)
    return Model(net.eval(), meta, torch.device(device))


def load_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), *, seed: int | None = None) -> Recipe:
    """A recipe file with `--set`-style overrides ("section.key=value"), checked as `mpl train` checks it."""
    return load_and_check(path, list(overrides), seed=seed)


def validate_recipe(recipe: Recipe | str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Raise MplError (exit_code 2) if the recipe (a file, or a Recipe object) is not valid; return it resolved, with
    the overrides. The checks are `mpl train`'s before it opens the data (`mpl recipes validate` checks the data too)."""
    return load_and_check(recipe, list(overrides))


def run(command: str | list | tuple, *args: Any, echo_logs: bool = True) -> str:
    """Run `mpl COMMAND ARGS...` in this process, as the CLI would; return what it printed on stdout (its result).

    `command` is split as a shell would split it (`'data info "/tmp/my dir/val"'`), or is a list of arguments
    already split; `args` are appended as they are.

    A failure raises the command's own MplError (its message is the one the CLI prints, its `exit_code` the CLI's
    exit status; 130 after Ctrl-C); usage errors from the argument parser raise MplError(exit_code=2) with the usage
    text. Nothing calls sys.exit. Logs and progress go to sys.stderr as the CLI's do (`echo_logs=False` drops them).
    """
    from mpltools import log
    from mpltools.cli import main

    words = shlex.split(command) if isinstance(command, str) else list(command)
    argv = [*map(str, words), *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    quiet = log._quiet
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(_Tee(err, sys.stderr) if echo_logs else err):
            try:
                main(argv, api=True)
            except SystemExit as exc:  # typer's standalone mode ends every command with one
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        log.set_quiet(quiet)  # `-q` of one call does not leak into the next
    if code:
        raise MplError(err.getvalue().strip() or f"mpl {' '.join(argv)} exited {code}", exit_code=code)
    return out.getvalue()


class _Tee(io.TextIOBase):
    """stderr for run(): kept (for a usage error's message) and passed on to the caller's stderr."""

    def __init__(self, *targets):
        self.targets = targets

    def write(self, text: str) -> int:
        for t in self.targets:
            t.write(text)
        return len(text)

    def flush(self) -> None:
        for t in self.targets:
            t.flush()

    def isatty(self) -> bool:
        return False
