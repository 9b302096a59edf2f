"""Checkpoints: exchanged model files and resume states, safetensors + JSON only (no pickle).

Exchanged checkpoint (DESIGN §3): one `.safetensors` file whose string metadata holds everything
needed to rebuild the model alone: architecture + kwargs, classes, input spec, normalisation, role,
step, the resolved recipe and, for derived files, the parent's sha256.

Resume state: `RUN/state/step_<N>/` holding named groups of tensors (`<group>.safetensors`) and
`state.json`; it counts only once its `COMMITTED` marker exists, which is written last. Older
states are pruned only after a newer one is committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open

from mpltools import __version__
from mpltools.atomic import DISK_ERRORS, atomic_file, fsync_dir, write_error
from mpltools.data.augment_spec import AugmentSpec
from mpltools.errors import MplError
from mpltools.stwrite import write_safetensors

FORMAT = "mpltools.checkpoint"
FORMAT_VERSION = 1
MARKER = "COMMITTED"


class EvalView(NamedTuple):
    augment: AugmentSpec  # the eval view's resize / centre crop (data/transforms.py `eval_view`)
    normalisation: tuple[list[float], list[float]]  # (mean, std), applied to uint8 images / 255


@dataclass
class CheckpointMeta:
    role: str
    architecture: str
    architecture_kwargs: dict
    num_classes: int
    input_shape: list[int]  # model input without batch: [C, H, W] or [D]
    input_spec: dict  # the shard set's input spec (kind, encoding, shape, dtype)
    normalisation: dict  # {"name", "mean", "std"} applied to uint8 images / 255
    augment: dict  # the augmentation settings (eval view: kind + image_size)
    classes: list[str]
    step: int = 0
    recipe: dict = field(default_factory=dict)
    parent_sha256: str = ""
    extra: dict = field(default_factory=dict)

    def eval_view(self) -> EvalView:
        """How this checkpoint's inputs are prepared to be predicted (`eval`, `filter-unlabeled`, `reduced predict`,
        the Python API): the eval view of its augmentation kind and image size, then its normalisation."""
        view = AugmentSpec(kind=self.augment.get("kind", "none"), image_size=self.augment.get("image_size", 1) or 1)
        return EvalView(view, (self.normalisation["mean"], self.normalisation["std"]))

    def to_metadata(self) -> dict[str, str]:
        meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "mpltools_version": __version__}
        for key, value in asdict(self).items():
            meta[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        return meta

    @staticmethod
    def from_metadata(meta: dict[str, str], path: Path) -> CheckpointMeta:
        if meta.get("format") != FORMAT:
            raise MplError(
                f"{path} is a safetensors file but not an mpltools checkpoint (no '{FORMAT}' metadata); "
                "export it with mpltools or pass a checkpoint written by `mpl train`/`finetune`."
            )
        if meta.get("format_version") != str(FORMAT_VERSION):
            raise MplError(
                f"{path} has checkpoint format version {meta.get('format_version')}; this mpltools ({__version__}) reads version {FORMAT_VERSION}."
            )
        values = {}
        try:
            for f in CheckpointMeta.__dataclass_fields__.values():
                raw = meta.get(f.name)
                if raw is None:
                    continue
                values[f.name] = raw if f.type == "str" else json.loads(raw)
            return CheckpointMeta(**values)
        except (TypeError, json.JSONDecodeError) as exc:
            raise MplError(f"{path} has malformed mpltools metadata ({exc}).") from None


@contextmanager
def _safe_open(path: Path):
    """`safe_open(path)`, also for a path that is not valid UTF-8 (which the library refuses): it is then opened
    through a symbolic link with a plain name in a private temporary folder."""
    try:
        os.fsdecode(path).encode("utf-8")
    except UnicodeEncodeError:
        folder = tempfile.mkdtemp(prefix="mpl-open-")
        try:
            link = os.path.join(folder, "file.safetensors")
            os.symlink(os.fsencode(os.path.abspath(path)), link)
            with safe_open(link, framework="pt") as fh:
                yield fh
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    with safe_open(path, framework="pt") as fh:
        yield fh


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _cpu_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; clone to plain contiguous CPU tensors.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_model(path: Path, model: torch.nn.Module, meta: CheckpointMeta, force: bool = True) -> Path:
    path = Path(path)
    with atomic_file(path, force=force) as tmp:
        write_safetensors(tmp, _cpu_tensors(model.state_dict()), meta.to_metadata())
    return path


def read_checkpoint(path: str | Path, check_finite: bool = True) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Tensors + metadata, with errors that name the file (safetensors' own messages do not)."""
    path = Path(path)
    if not path.is_file():
        raise MplError(f"checkpoint {path} does not exist.")
    try:
        with _safe_open(path) as fh:
            meta = CheckpointMeta.from_metadata(fh.metadata() or {}, path)
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except SafetensorError as exc:
        raise MplError(
            f"{path} is not a readable safetensors checkpoint ({exc}); it is truncated or corrupt: "
            "use another copy or re-run the command that wrote it."
        ) from None
    _check_architecture(meta, path)
    if check_finite:
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise MplError(
                    f"{path}: weight {name!r} contains NaN or inf; the run that wrote it diverged. "
                    "Use an earlier checkpoint (e.g. from RUN/state/)."
                )
    return tensors, meta


def _check_architecture(meta: CheckpointMeta, path: Path) -> None:
    """The network the metadata names must be one this mpltools builds: otherwise the file's content is bad (exit 1),
    whichever command reads it."""
    from mpltools.models.registry import validate_model_args

    try:
        validate_model_args(meta.architecture, meta.architecture_kwargs)
    except (ValueError, TypeError, AttributeError) as exc:
        raise MplError(
            f"{path}: its metadata names a network this mpltools cannot build ({str(exc).strip(chr(39))}); "
            "the file was written by another version or edited: use a checkpoint written by `mpl train`/`finetune`."
        ) from None


def build_model_from(meta: CheckpointMeta):
    from mpltools.models import build_model

    return build_model(meta.architecture, meta.num_classes, tuple(meta.input_shape), **meta.architecture_kwargs)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, CheckpointMeta]:
    """Rebuild the model from the checkpoint's metadata alone and load its weights."""
    tensors, meta = read_checkpoint(path)
    try:
        model = build_model_from(meta)
    except ValueError as exc:
        raise MplError(f"{path}: cannot rebuild its model ({exc}).") from None
    missing, unexpected = _diff_keys(model.state_dict(), tensors)
    if missing or unexpected:
        raise MplError(
            f"{path}: weights do not fit architecture {meta.architecture} {meta.architecture_kwargs} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})."
        )
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise MplError(f"{path}: weights do not fit architecture {meta.architecture}: {str(exc).splitlines()[0]}") from None
    return model.to(device), meta


def _diff_keys(expected: dict, got: dict) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))


def check_compatible(
    meta: CheckpointMeta,
    num_classes: int,
    input_spec: dict | None,
    path: Path,
    data: str,
    classes: list[str] | None = None,
    hint: str = "",
) -> None:
    """A checkpoint must fit the data it is used with: same number of classes and input shape, and with the
    data's `classes` given, the same class names in the same order (`check_classes`)."""
    if meta.role == "reduced_teacher":
        raise MplError(
            f"{path} is a reduced teacher (Reduced MPL): its input is a large teacher's stored predictions, not "
            f"images, so it cannot be applied to {data}. Use the student trained with it "
            "(student.safetensors in the same run folder)."
        )
    if meta.num_classes != num_classes:
        raise MplError(
            f"{path} predicts {meta.num_classes} classes but {data} has {num_classes}; use a checkpoint trained on this label set."
        )
    if input_spec and input_spec.get("shape") and meta.input_spec.get("shape") and meta.augment.get("kind") != "imagenet":
        if list(input_spec["shape"]) != list(meta.input_spec["shape"]):
            raise MplError(
                f"{path} was trained on inputs of shape {meta.input_spec['shape']} but {data} holds {input_spec['shape']}."
            )
    if input_spec and input_spec.get("kind") != meta.input_spec.get("kind"):
        raise MplError(f"{path} takes {meta.input_spec.get('kind')} inputs but {data} holds {input_spec.get('kind')} inputs.")
    if classes:
        check_classes(meta, classes, path, data, hint)


def check_classes(meta: CheckpointMeta, classes: list[str], path: Path, data: str, hint: str = "") -> None:
    """The one check that a checkpoint predicts the data's label set: the same class names in the same order.
    The same count is not enough: a reordered or renamed set would score or train every sample against another
    class. MplError (exit 1) naming the checkpoint and the first positions whose names differ; `hint` is added."""
    if not meta.classes or list(meta.classes) == list(classes):
        return
    if len(meta.classes) != len(classes):
        raise MplError(
            f"{path} predicts {len(meta.classes)} classes but {data} has {len(classes)}; use a checkpoint trained on this label set.{hint}"
        )
    differ = [i for i, (a, b) in enumerate(zip(meta.classes, classes)) if a != b]
    shown = ", ".join(f"class {i} is {meta.classes[i]!r} in the checkpoint, {classes[i]!r} in the data" for i in differ[:3])
    more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
    raise MplError(
        f"{path} was trained on another label set than {data}: {shown}{more}; use a checkpoint trained on this label set.{hint}"
    )


# ---------------------------------------------------------------- resume states


def state_dir(run: Path, step: int) -> Path:
    return Path(run) / "state" / f"step_{step:09d}"


def latest_state(run: Path) -> Path | None:
    """The newest committed state; uncommitted folders (a crash mid-save) are ignored."""
    root = Path(run) / "state"
    if not root.is_dir():
        return None
    committed = sorted(p for p in root.glob("step_*") if (p / MARKER).is_file())
    return committed[-1] if committed else None


def save_state(
    run: Path,
    step: int,
    groups: dict[str, dict[str, torch.Tensor]],
    scalars: dict,
    keep_last: int,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write a state folder, commit it with the marker last, then prune older ones. A step already committed is
    kept as it is (a stop request right after a periodic save): deleting it to write it again would leave a
    window in which a kill destroys the newest state."""
    final = state_dir(run, step)
    if (final / MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if final.exists():
        shutil.rmtree(final)  # an uncommitted folder of the same step from an earlier crash
    try:
        _write_state(tmp, final, step, groups, scalars, extra_files)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a `.step_N.tmp` behind (disk full, Ctrl-C)
        if not (final / MARKER).is_file():
            shutil.rmtree(final, ignore_errors=True)  # nor a renamed folder whose marker could not be written
        if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
            raise write_error(final, exc) from None
        raise
    fsync_dir(final.parent)
    _prune(final.parent, keep_last)
    return final


def _write_state(
    tmp: Path,
    final: Path,
    step: int,
    groups: dict[str, dict[str, torch.Tensor]],
    scalars: dict,
    extra_files: dict[str, Path] | None,
) -> None:
    tmp.mkdir()
    for name, tensors in groups.items():
        write_safetensors(tmp / f"{name}.safetensors", _cpu_tensors(tensors))
    for name, src in (extra_files or {}).items():
        shutil.copyfile(src, tmp / name)
    (tmp / "state.json").write_text(json.dumps(scalars, indent=1, sort_keys=True), encoding="utf-8")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, final)
    with atomic_file(final / MARKER) as marker:
        marker.write_text(f"step {step}\n")


def _prune(root: Path, keep_last: int) -> None:
    committed = sorted(p for p in root.glob("step_*") if (p / MARKER).is_file())
    for old in committed[:-keep_last]:
        (old / MARKER).unlink()  # un-commit first, so a crash mid-delete never leaves a half state that looks valid
        shutil.rmtree(old)
    newest = committed[-1].name if committed else ""
    for stale in root.glob("step_*"):
        if not (stale / MARKER).is_file() and stale.name < newest:
            shutil.rmtree(stale)


def load_state(folder: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    folder = Path(folder)
    groups = {}
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with _safe_open(f) as fh:
                groups[f.stem] = {k: fh.get_tensor(k) for k in fh.keys()}
        except SafetensorError as exc:
            raise MplError(
                f"resume state file {f} is unreadable ({exc}); delete {folder} to resume from the previous state."
            ) from None
    scalars = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    return groups, scalars


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten an SGD-style optimizer's per-parameter state into named tensors."""
    out = {}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for key, value in optimizer.state.get(p, {}).items():
            if torch.is_tensor(value):
                out[f"{i}.{key}"] = value
            elif value is not None:
                out[f"{i}.{key}"] = torch.tensor(value)
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    params = [p for g in optimizer.param_groups for p in g["params"]]
    optimizer.state.clear()
    for name, value in tensors.items():
        index, _, key = name.partition(".")
        p = params[int(index)]
        optimizer.state[p][key] = value.to(p.device) if value.ndim else value
