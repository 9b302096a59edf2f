"""Recipes: TOML files mapped onto typed sections, with `--set section.key=value` overrides.

Precedence: command line (`--set`) > recipe > the defaults below. Unknown sections or keys, values
of the wrong type or out of range (the table in `recipe_ranges`) are rejected here, before anything
runs, naming the key (and the nearest valid one) and where its value came from (the file, `--set` or
`--seed`); independent faults are collected (`Faults`) and reported together. The rules that need more than the recipe's values (the model registry, rules
between keys, the data) are `mpltools.preflight`'s; commands load recipes through
`preflight.load_and_check`. The resolved recipe is saved in the run folder and in every
checkpoint's metadata. Standard library only.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mpltools.errors import RecipeFaults, UsageError
from mpltools.recipe_ranges import out_of_range


@dataclass
class DataConfig:
    labeled: str = ""  # labelled shard set (paths are relative to the working directory)
    unlabeled: str = ""  # unlabelled shard set (not needed by `supervised`)
    val: str = ""  # validation shard set for periodic evaluation ("" = none)
    batch_size: int = 64  # labelled batch B, global over all processes
    unlabeled_ratio: int = 7  # mu: the unlabelled batch is mu * B images per view
    workers: int = 2  # DataLoader workers per process, split between the two streams by their work (data/sizing.py)
    prefetch_mb: int = 1024  # per process: decoded batches the workers may queue (1..4 per worker)
    in_memory: Literal["auto", "yes", "no"] = "auto"  # decode small sets once into RAM
    in_memory_max_mb: int = 2048
    shuffle_buffer: int = 2000  # streamed sets: samples in the shuffle buffer per worker


@dataclass
class AugmentConfig:
    kind: Literal["cifar", "imagenet", "none"] = "cifar"
    image_size: int = 0  # 0 = the data's own size
    num_layers: int = 2  # RandAugment N
    magnitude: float = 16.0  # RandAugment M (nominal max 10; the authors extrapolate to 16/17)
    cutout: bool = True
    flip: bool = True
    translate_const: float = 0.0  # 0 = the authors' constant (image_size//8 for cifar, 100 px for imagenet)
    cutout_const: float = 0.0  # 0 = the authors' constant (image_size//8 for cifar, 40 px for imagenet)
    normalisation: Literal["cifar10", "cifar100", "svhn", "imagenet", "none"] = "none"  # none = x/255


@dataclass
class ModelConfig:
    name: str = "wrn28_2"
    kwargs: dict = field(default_factory=dict)  # architecture options (e.g. dropout), stored in checkpoints
    teacher_name: str = ""  # "" = same as name
    teacher_kwargs: dict = field(default_factory=dict)  # "" name and {} = same as the student


@dataclass
class MethodConfig:
    name: Literal["mpl", "released", "supervised", "uda", "pseudo-label", "fixmatch"] = "mpl"
    pseudo_labels: Literal["sample", "argmax", "soft"] = "sample"
    pseudo_label_view: Literal["strong", "weak"] = "strong"
    student_view: Literal["strong", "weak"] = "strong"  # the unlabelled view the student learns the pseudo labels on
    feedback: Literal["taylor", "dot", "cosine"] = "taylor"
    feedback_bn: Literal["batch", "eval"] = "batch"
    baseline: bool = True
    baseline_decay: float = 0.99
    mpl_weight: float = 1.0
    label_smoothing: float = 0.0
    uda_temperature: float = 0.7
    uda_threshold: float = 0.6
    uda_weight: float = 8.0
    uda_ramp_steps: int = 5000
    teacher_supervised_weight: float = 1.0
    teacher_weak_no_grad: bool = False
    teacher_checkpoint: str = ""  # pseudo-label: the fixed teacher
    feedback_sign: int = 1  # 1 = the paper's sign; -1 = the sign-flipped ablation (for studies only)
    fixmatch_threshold: float = 0.95  # fixmatch: keep an unlabelled image when its weak-view max probability >= this
    fixmatch_weight: float = 1.0  # fixmatch: lambda_u, the weight of the unlabelled CE


TWO_NETWORKS = ("mpl", "released")  # the methods that train a teacher and a student together


@dataclass
class OptimConfig:
    lr: float = 0.05  # effective learning rate (the authors' base lr x B/256)
    warmup_steps: int = 0
    wait_steps: int = 0  # student only: lr 0 for this many steps first
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    max_grad_norm: float = 0.0  # 0 = no clipping
    ema_decay: float = 0.0  # student only; 0 = no EMA
    optimizer: Literal["sgd", "adam"] = "sgd"  # teacher only: "adam" is a study option (feedback-only MPL)


@dataclass
class ScheduleConfig:
    steps: int = 1000
    lr_schedule: Literal["cosine", "constant", "linear"] = "cosine"


@dataclass
class CheckpointConfig:
    every: int = 1000  # commit a resume state every N steps (and at the end / on Ctrl-C)
    keep_last: int = 2


@dataclass
class EvalConfig:
    every: int = 0  # evaluate on data.val every N steps (0 = only at the end, if data.val is set)
    batch_size: int = 256


@dataclass
class RuntimeConfig:
    seed: int = 0
    # auto = bf16 on a GPU with native bf16 (compute capability >= 8.0), else fp32; fp16 = with loss scaling
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    loss_scale_init: float = 65536.0  # fp16 only: first dynamic loss scale (halved on overflow)
    loss_scale_growth_interval: int = 2000  # fp16 only: double the scale after this many steps without overflow
    # Channels-last memory format for the networks and their inputs: "auto" = on for convolutional
    # networks over images (about 19% faster on CPU for the WRN, and the fast path of GPU convolutions).
    channels_last: Literal["auto", True, False] = "auto"
    compile: bool = False
    log_every: int = 50
    threads: int = 0  # torch threads per process on CPU (0 = leave as is)
    tensorboard: bool = False  # deprecated alias of trackers = ["tensorboard"]
    trackers: list[str] = field(default_factory=list)  # any of "tensorboard", "wandb", "mlflow" (mpltools/tracking.py)
    # Where W&B / MLflow file the run; "" or [] = the tracker's environment variable (WANDB_PROJECT, ...), else a default
    tracker_project: str = ""  # W&B project, MLflow experiment (default "mpltools")
    tracker_entity: str = ""  # W&B entity (team or user)
    tracker_run_name: str = ""  # the run's name in the tracker (default: the run folder's name)
    tracker_tags: list[str] = field(default_factory=list)


@dataclass
class FinetuneConfig:
    steps: int = 1000
    lr: float = 1e-5
    batch_size: int = 512
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = True
    warmup_steps: int = 0
    lr_schedule: Literal["cosine", "constant", "linear"] = "constant"
    label_smoothing: float = 0.0
    augment: bool = True  # weak augmentation of the labelled images


@dataclass
class Recipe:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    teacher: OptimConfig = field(default_factory=OptimConfig)
    student: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Recipe)}


def keys() -> list[str]:
    """Every recipe key as `section.key`, in the order of the dataclasses (shell completion of `--set`)."""
    return [f"{section}.{f.name}" for section, cls in typing.get_type_hints(Recipe).items() for f in dataclasses.fields(cls)]


def _nearest(name: str, options: typing.Iterable[str]) -> str:
    near = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" Did you mean {near[0]!r}?" if near else ""


def _section_types(section: str) -> dict[str, Any]:
    cls = typing.get_type_hints(Recipe)[section]
    return typing.get_type_hints(cls)


def _coerce(where: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in typing.get_args(hint)):  # 1 is not True
            choices = ", ".join(_toml_value(a) if isinstance(a, bool) else repr(a) for a in typing.get_args(hint))
            raise UsageError(
                f"{where} = {value!r} is not valid; choose one of {choices}.{_nearest(str(value), map(str, typing.get_args(hint)))}"
            )
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{where} must be true or false, not {value!r}.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{where} must be an integer, not {value!r}.")
        if not -(2**63) <= value < 2**63:
            raise UsageError(f"{where} must be a 64-bit integer, not {value}.")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{where} must be a number, not {value!r}.")
        if value != value or value in (float("inf"), float("-inf")):
            raise UsageError(f"{where} must be a finite number, not {value!r}.")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UsageError(f"{where} must be a string, not {value!r}.")
        return value
    if origin is list:
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise UsageError(f'{where} must be a list of strings, e.g. ["tensorboard"], not {value!r}.')
        return list(value)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where} must be a table, e.g. {{ dropout = 0.2 }}, not {value!r}.")
        return dict(value)
    raise UsageError(f"{where}: unsupported type {hint}")


class Faults:
    """The faults found in one recipe, each a line that names its key and where the value came from: the recipe
    file, `--set KEY=VALUE` or `--seed N`. Independent checks each add theirs; `raise_if_any` raises them all at
    once (exit 2), so `mpl recipes validate` reports every fault, and `mpl train` those found before the data."""

    def __init__(self, source: str, overrides: typing.Iterable[str] = (), seed: int | None = None):
        self.source = source
        self.given: dict[str, str] = {}
        for text in overrides:
            self.given[".".join(parse_override(text)[0])] = f"--set {text}"
        if seed is not None:
            self.given["runtime.seed"] = f"--seed {seed}"
        self.lines: list[str] = []

    def where(self, key: str) -> str:
        """`--set ...` or `--seed N` when they gave the key's value (or a table above it, or a key in it), else the file."""
        for path, flag in reversed(self.given.items()):
            if key and (path == key or path.startswith(key + ".") or key.startswith(path + ".")):
                return flag
        return self.source

    def add(self, key: str, text: str) -> None:
        line = f"{self.where(key)}: {text}"
        if line not in self.lines:
            self.lines.append(line)

    def raise_if_any(self) -> None:
        if self.lines:
            raise RecipeFaults(self.lines)


def from_dict(raw: dict, source: str = "recipe", faults: Faults | None = None) -> Recipe:
    """A Recipe from TOML tables; each unknown section or key and each value of the wrong type is a fault (the
    key keeps its default). Without `faults` they are raised at once."""
    own = faults is None
    faults = Faults(source) if own else faults
    recipe = Recipe()
    for section, values in raw.items():
        if section not in SECTIONS:
            faults.add(
                section, f"unknown section [{section}].{_nearest(section, SECTIONS)} Valid sections: {', '.join(SECTIONS)}."
            )
            continue
        if not isinstance(values, dict):
            faults.add(section, f"[{section}] must be a table of keys.")
            continue
        types = _section_types(section)
        target = getattr(recipe, section)
        for key, value in values.items():
            if key not in types:
                faults.add(
                    f"{section}.{key}",
                    f"unknown key {section}.{key}.{_nearest(key, types)} Valid keys of [{section}]: {', '.join(types)}.",
                )
                continue
            try:
                setattr(target, key, _coerce(f"{section}.{key}", value, types[key]))
            except UsageError as exc:
                faults.add(f"{section}.{key}", exc.message)
    if own:
        faults.raise_if_any()
    return recipe


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` (value in TOML syntax; a bare word is a string) -> (path, value)."""
    if "=" not in text:
        raise UsageError(f"--set {text!r} must look like section.key=value (e.g. --set method.name=uda).")
    path, _, raw_value = text.partition("=")
    parts = [p.strip() for p in path.strip().split(".")]
    if len(parts) < 2 or not all(parts):
        raise UsageError(f"--set {text!r}: the name must be section.key (e.g. schedule.steps).")
    try:
        value = tomllib.loads(f"v = {raw_value}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw_value.strip()  # bare words such as `uda` or a path
    return parts, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"--set {text!r}: {part} is not a table.")
        node[parts[-1]] = value
    return raw


def read(path: str | Path) -> dict:
    """A recipe file's TOML tables; a missing file or bad TOML is a usage error."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"recipe {path} does not exist; `mpl recipes ls` lists the shipped recipes, which go by name.")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}.") from None


def load_recipe(path: str | Path | None, overrides: list[str] = (), *, seed: int | None = None) -> Recipe:
    """A recipe file (None = the defaults) with `--set` overrides and `--seed`, typed and range-checked."""
    raw = read(path) if path is not None else {}
    return resolve(raw, overrides, seed=seed, source=str(path) if path is not None else "defaults")


def resolve(raw: dict, overrides: list[str] = (), *, seed: int | None = None, source: str = "recipe") -> Recipe:
    """A recipe from its TOML tables (e.g. `Recipe.to_dict()`), with overrides and seed, typed and range-checked."""
    recipe, faults = resolve_faults(raw, overrides, seed=seed, source=source)
    faults.raise_if_any()
    return recipe


def resolve_faults(
    raw: dict, overrides: list[str] = (), *, seed: int | None = None, source: str = "recipe"
) -> tuple[Recipe, Faults]:
    """`resolve` that returns the faults found (types, ranges) instead of raising them; a malformed `--set` still
    raises at once."""
    faults = Faults(source, overrides, seed)
    raw = apply_overrides(raw, list(overrides))
    if seed is not None:
        raw.setdefault("runtime", {})["seed"] = seed
    recipe = from_dict(raw, source, faults)
    check_ranges(recipe, faults)
    return recipe, faults


def check_ranges(r: Recipe, faults: Faults) -> None:
    """Every key's range (`recipe_ranges.RANGES`) but [finetune]'s (`validate_finetune`: `mpl finetune` reads it)."""
    for key, text in out_of_range(r.to_dict(), skip="finetune"):
        faults.add(key, text)


def check_finetune(r: Recipe, faults: Faults) -> None:
    """The [finetune] section's ranges (`mpl finetune`; `resolve` leaves the section alone)."""
    for key, text in out_of_range(r.to_dict(), only="finetune"):
        faults.add(key, text)


def to_toml(recipe: Recipe) -> str:
    """The resolved recipe as TOML (for --print-config and the run folder)."""
    lines = []
    for section, values in recipe.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")
