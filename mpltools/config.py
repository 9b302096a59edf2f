"""Recipes: TOML files mapped onto typed sections, with `--set section.key=value` overrides.

Precedence: command line (`--set`) > recipe > the defaults below. Unknown sections or keys, values
of the wrong type or out of range are rejected here, before anything runs, naming the key (and the
nearest valid one). The rules that need more than the recipe's values (the model registry, rules
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

from mpltools.errors import UsageError


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


def from_dict(raw: dict, source: str = "recipe") -> Recipe:
    recipe = Recipe()
    for section, values in raw.items():
        if section not in SECTIONS:
            raise UsageError(
                f"{source}: unknown section [{section}].{_nearest(section, SECTIONS)} Valid sections: {', '.join(SECTIONS)}."
            )
        if not isinstance(values, dict):
            raise UsageError(f"{source}: [{section}] must be a table of keys.")
        types = _section_types(section)
        target = getattr(recipe, section)
        for key, value in values.items():
            if key not in types:
                raise UsageError(
                    f"{source}: unknown key {section}.{key}.{_nearest(key, types)} Valid keys of [{section}]: {', '.join(types)}."
                )
            setattr(target, key, _coerce(f"{section}.{key}", value, types[key]))
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


def load_recipe(path: str | Path | None, overrides: list[str] = (), *, seed: int | None = None) -> Recipe:
    """A recipe file (None = the defaults) with `--set` overrides and `--seed`, typed and range-checked."""
    raw: dict = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"recipe {path} does not exist; the shipped recipes are in recipes/.")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{path} is not valid TOML: {exc}.") from None
        source = str(path)
    return resolve(raw, overrides, seed=seed, source=source)


def resolve(raw: dict, overrides: list[str] = (), *, seed: int | None = None, source: str = "recipe") -> Recipe:
    """A recipe from its TOML tables (e.g. `Recipe.to_dict()`), with overrides and seed, typed and range-checked."""
    raw = apply_overrides(raw, list(overrides))
    if seed is not None:
        raw.setdefault("runtime", {})["seed"] = seed
    recipe = from_dict(raw, source)
    validate(recipe, source)
    return recipe


def validate(r: Recipe, source: str) -> None:
    """The ranges the types cannot express (all sections but [finetune]: `validate_finetune`)."""

    def bad(msg: str) -> UsageError:
        return UsageError(f"{source}: {msg}")

    if r.data.batch_size < 1 or r.data.unlabeled_ratio < 1:
        raise bad("data.batch_size and data.unlabeled_ratio must be at least 1.")
    if r.data.workers < 0 or r.data.prefetch_mb < 1:
        raise bad("data.workers must be >= 0 and data.prefetch_mb >= 1.")
    if r.schedule.steps < 1:
        raise bad("schedule.steps must be at least 1.")
    if r.method.feedback_sign not in (1, -1):
        raise bad(
            f"method.feedback_sign must be 1 (the paper's sign) or -1 (the flipped ablation), not {r.method.feedback_sign}."
        )
    if not 0 <= r.method.fixmatch_threshold <= 1 or r.method.fixmatch_weight < 0:
        raise bad("method.fixmatch_threshold must be in [0, 1] and method.fixmatch_weight >= 0.")
    if not 0 <= r.method.label_smoothing < 1 or not 0 <= r.method.baseline_decay < 1:
        raise bad("method.label_smoothing and method.baseline_decay must be in [0, 1).")
    if r.runtime.loss_scale_init <= 0 or r.runtime.loss_scale_growth_interval < 1:
        raise bad("runtime.loss_scale_init must be > 0 and runtime.loss_scale_growth_interval at least 1.")
    if r.checkpoint.every < 1 or r.checkpoint.keep_last < 1:
        raise bad("checkpoint.every and checkpoint.keep_last must be at least 1.")
    for name in ("teacher", "student"):
        o: OptimConfig = getattr(r, name)
        if o.lr < 0 or o.weight_decay < 0 or not 0 <= o.momentum < 1 or o.max_grad_norm < 0 or not 0 <= o.ema_decay < 1:
            raise bad(f"[{name}] lr, weight_decay and max_grad_norm must be >= 0; momentum and ema_decay in [0, 1).")
    if r.student.optimizer != "sgd":
        raise bad(
            'student.optimizer must be "sgd" (the one-step feedback assumes an SGD student); only [teacher] may use "adam".'
        )
    for key in ("teacher.warmup_steps", "student.warmup_steps", "student.wait_steps"):
        section, name = key.split(".")
        if getattr(getattr(r, section), name) < 0:
            raise bad(f"{key} must be >= 0, not {getattr(getattr(r, section), name)}.")
    m = r.method
    for key in _NONNEG_METHOD:
        if getattr(m, key) < 0:
            raise bad(f"method.{key} must be >= 0, not {getattr(m, key)}.")
    if m.uda_temperature == 0:
        raise bad("method.uda_temperature must be > 0 (it divides the logits), not 0.")
    if not 0 <= m.uda_threshold <= 1:
        raise bad(f"method.uda_threshold must be in [0, 1], not {m.uda_threshold}.")
    if r.eval.batch_size < 1:
        raise bad(f"eval.batch_size must be at least 1, not {r.eval.batch_size}.")
    if r.eval.every < 0:
        raise bad(f"eval.every must be >= 0, not {r.eval.every}.")
    if r.runtime.log_every < 1:
        raise bad(f"runtime.log_every must be at least 1, not {r.runtime.log_every}.")


_NONNEG_METHOD = ("mpl_weight", "uda_weight", "teacher_supervised_weight", "uda_temperature", "uda_ramp_steps")


def validate_finetune(r: Recipe, source: str) -> None:
    """The [finetune] section's ranges (`mpl finetune`; `validate` leaves the section alone)."""
    ft = r.finetune
    if ft.steps < 1:
        raise UsageError(f"{source}: finetune.steps must be at least 1, not {ft.steps}.")
    if ft.batch_size < 1:
        raise UsageError(f"{source}: finetune.batch_size must be at least 1, not {ft.batch_size}.")
    for key in ("lr", "weight_decay", "warmup_steps"):
        if getattr(ft, key) < 0:
            raise UsageError(f"{source}: finetune.{key} must be >= 0, not {getattr(ft, key)}.")
    if not 0 <= ft.momentum < 1:
        raise UsageError(f"{source}: finetune.momentum must be in [0, 1), not {ft.momentum}.")
    if not 0 <= ft.label_smoothing < 1:
        raise UsageError(f"{source}: finetune.label_smoothing must be in [0, 1), not {ft.label_smoothing}.")


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
