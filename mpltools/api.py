"""A small Python API over the same code the `mpl` commands run.

    import mpltools
    model = mpltools.load_checkpoint("runs/tiny/digits/student.safetensors")
    probs = model.predict(images)          # (N, classes) probabilities
    model.classify(image)                  # [("3", 0.97)]: best class and its probability per input
    recipe = mpltools.load_recipe("recipes/tiny/digits.toml", ["schedule.steps=5"])
    out = mpltools.run("eval", "runs/.../student.safetensors", "--data", "data/...", "--json")

Failures raise `mpltools.MplError` (its `exit_code` is the CLI's). Importing `mpltools` does not import
torch: this module is loaded on first use of one of its names.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpltools.checkpoint import CheckpointMeta, load_model
from mpltools.config import Recipe, validate
from mpltools.config import load_recipe as _load_recipe
from mpltools.data import transforms
from mpltools.data.loaders import to_model_input
from mpltools.errors import MplError


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
        a = self.meta.augment
        return transforms.AugmentSpec(kind=a.get("kind", "none"), image_size=a.get("image_size", 1) or 1)

    def inputs(self, x: Any) -> torch.Tensor:
        """A batch of model inputs from a PIL image, a uint8 image array/tensor (HxWxC, or NxHxWxC), a float
        tensor of model inputs (already normalised), or a list of these."""
        items = x if isinstance(x, (list, tuple)) else [x]
        arrays = [self._one(item) for item in items]
        batch = torch.cat(arrays) if len(arrays) > 1 else arrays[0]
        return batch.to(self.device)

    def _one(self, x: Any) -> torch.Tensor:
        shape = list(self.meta.input_shape)
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.float().unsqueeze(0) if list(x.shape) == shape else x.float()
        a = np.asarray(x)
        if a.dtype != np.uint8:
            raise MplError(f"predict: expected a PIL image, uint8 image data or float model inputs of shape {shape}, "
                           f"got {a.dtype} of shape {list(a.shape)}.", exit_code=2)
        many = a.ndim == 4 or (a.ndim == 3 and len(shape) == 3 and shape[0] == 1 and a.shape[-1] != 1)  # N x H x W grey
        views = [transforms.eval_view(img, self.transform) for img in (a if many else [a])]
        norm = (self.meta.normalisation["mean"], self.meta.normalisation["std"])
        return to_model_input(torch.from_numpy(np.stack(views)), norm, self.device)

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
    return _load_recipe(path, list(overrides), seed=seed)


def validate_recipe(recipe: Recipe | str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Raise MplError (exit_code 2) if the recipe is not valid; return it resolved."""
    if isinstance(recipe, Recipe):
        validate(recipe, "recipe")
        return recipe
    return load_recipe(recipe, overrides)


def run(command: str, *args: Any) -> str:
    """Run `mpl COMMAND ARGS...` in this process; return what it printed on stdout (its result).
    A failure raises MplError whose exit_code is the command's exit status and whose message is its stderr."""
    from mpltools.cli import main

    argv = [*str(command).split(), *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if code:
        message = err.getvalue().strip() or f"mpl {' '.join(argv)} exited {code}"
        raise MplError(message, exit_code=code)
    return out.getvalue()
