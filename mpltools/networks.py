"""The networks of a training run: built from the recipe (with their optimisers, EMA and loss scalers),
and written at the end as checkpoints with their metadata.

Baselines train one network, called the student; pseudo-label adds a fixed teacher read from a checkpoint;
`mpl`/`released` train a teacher too (Reduced MPL's reads a large teacher's stored predictions).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mpltools import log
from mpltools import runtime as rt
from mpltools.checkpoint import CheckpointMeta, file_sha256, load_model, save_model
from mpltools.config import TWO_NETWORKS, ModelConfig, Recipe
from mpltools.errors import MplError, UsageError
from mpltools.methods.common import MPLHyper, Networks
from mpltools.methods.optim import EMA, build_adam, build_sgd, norm_parameter_names
from mpltools.methods.precision import LossScaler
from mpltools.train_data import DataSetup


def build_network(name: str, kwargs: dict, data: DataSetup, input_shape: tuple[int, ...] | None = None) -> torch.nn.Module:
    """A fresh network for `data`; `input_shape` replaces the data's model input shape (Reduced MPL's teacher)."""
    from mpltools.models import build_model

    try:
        return build_model(name, data.num_classes, input_shape or data.model_input_shape, **kwargs)
    except ValueError as exc:
        raise UsageError(f"model {name}: {exc}") from None


def use_channels_last(setting, data: DataSetup, *nets: torch.nn.Module | None) -> bool:
    """`runtime.channels_last` resolved: "auto" = on when the input is an image and a network convolves."""
    if setting is False or data.input_spec.kind != "image":
        return False
    return setting is True or any(isinstance(m, torch.nn.Conv2d) for net in nets if net is not None for m in net.modules())


def checkpoint_meta(
    role: str, name: str, kwargs: dict, data: DataSetup, recipe: Recipe, step: int, parent: str = "", extra: dict | None = None
) -> CheckpointMeta:
    return CheckpointMeta(
        role=role,
        architecture=name,
        architecture_kwargs=dict(kwargs),
        num_classes=data.num_classes,
        input_shape=list(data.model_input_shape),
        input_spec=data.input_spec.to_json(),
        normalisation=data.normalisation,
        augment={"kind": data.augment.kind, "image_size": data.augment.image_size},
        classes=data.classes,
        step=step,
        recipe=recipe.to_dict(),
        parent_sha256=parent,
        extra=extra or {},
    )


def teacher_architecture(model: ModelConfig) -> tuple[str, dict]:
    """(name, kwargs) of the teacher a recipe trains: model.teacher_name, else the student's architecture (with the
    student's kwargs unless model.teacher_kwargs are given)."""
    name = model.teacher_name or model.name
    kwargs = model.teacher_kwargs or (model.kwargs if not model.teacher_name else {})
    return name, kwargs


def build_networks(recipe: Recipe, hp: MPLHyper, data: DataSetup, runtime, init_student: Path | None, reduced: bool) -> Networks:
    """The networks, optimisers, EMA and loss scalers of a run, identical on every process, in channels-last memory
    when `runtime.channels_last` asks for it, compiled when `runtime.compile` does. `init_student`: start the student
    from this checkpoint's weights (finetuning); `reduced`: the teacher reads logit vectors (Reduced MPL)."""
    method, device = recipe.method.name, runtime.device
    rt.seed_initial_networks(recipe.runtime.seed)
    student = build_network(recipe.model.name, recipe.model.kwargs, data).to(device)
    if init_student is not None:
        student.load_state_dict(load_model(init_student)[0].state_dict())
    teacher = None
    if method in TWO_NETWORKS:
        name, kwargs = teacher_architecture(recipe.model)
        teacher = build_network(name, kwargs, data, input_shape=(data.num_classes,) if reduced else None).to(device)
    elif method == "pseudo-label":
        teacher, teacher_meta = load_model(recipe.method.teacher_checkpoint, device)
        if teacher_meta.num_classes != data.num_classes:
            raise MplError(
                f"{recipe.method.teacher_checkpoint} predicts {teacher_meta.num_classes} classes, the data has {data.num_classes}."
            )
        teacher.eval().requires_grad_(False)
    if use_channels_last(recipe.runtime.channels_last, data, student, teacher):
        for net in (student, teacher):
            if net is not None:
                net.to(memory_format=torch.channels_last)
    if recipe.runtime.compile:
        _compile(student, teacher)
    s_no_decay = norm_parameter_names(student)
    student_opt = build_sgd(student, hp.student_lr, hp.momentum, hp.nesterov, hp.student_weight_decay, s_no_decay)
    teacher_opt, t_no_decay = None, frozenset()
    if method in TWO_NETWORKS:
        t_no_decay = norm_parameter_names(teacher)
        if recipe.teacher.optimizer == "adam":  # a study option, see build_adam
            teacher_opt = build_adam(teacher, hp.teacher_lr, hp.teacher_weight_decay, t_no_decay)
        else:
            teacher_opt = build_sgd(teacher, hp.teacher_lr, hp.momentum, hp.nesterov, hp.teacher_weight_decay, t_no_decay)
    ema = EMA(student, hp.ema_decay) if hp.ema_decay > 0 else None
    teacher_scaler, student_scaler = _loss_scalers(recipe, runtime.mixed_precision, teacher_opt is not None)
    return Networks(teacher, student, teacher_opt, student_opt, ema, None, t_no_decay, s_no_decay, teacher_scaler, student_scaler)


def _compile(*nets: torch.nn.Module | None) -> None:
    """In-place `Module.compile` keeps parameter names, so checkpoints and resume states are unchanged.
    Donated buffers forbid a second backward through one graph, which the diagnostics of logging steps
    (separate autograd.grad calls per loss term) and soft labels' double backward need."""
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    for net in nets:
        if net is not None:
            net.compile()


def _loss_scalers(recipe: Recipe, mixed_precision: str, teacher_trained: bool) -> tuple:
    """(teacher scaler, student scaler): fp16 needs loss scaling, one scaler per trained network."""
    if mixed_precision != "fp16":
        return None, None
    make = lambda: LossScaler(recipe.runtime.loss_scale_init, growth_interval=recipe.runtime.loss_scale_growth_interval)  # noqa: E731
    return (make() if teacher_trained else None), make()


def student_for_eval(nets: Networks) -> torch.nn.Module:
    """The student as it is evaluated and exported: its EMA weights when the run keeps an EMA."""
    if nets.ema is None:
        return nets.student
    model = copy.deepcopy(nets.student)
    nets.ema.copy_to(model)
    return model


# ---------------------------------------------------------------- export


@dataclass(frozen=True)
class Output:
    """One checkpoint a run writes at its end: its file name in the run folder, its role, what its metadata's `extra`
    adds, and the sha256 of the checkpoint it was trained from (finetuning)."""

    file: str
    role: str
    extra: dict = field(default_factory=dict)
    parent_sha256: str = ""


def default_student(method: str) -> Output:
    """`mpl train`'s student file: role "student" when a teacher taught it, "supervised" for the baselines."""
    return Output("student.safetensors", "student" if method in TWO_NETWORKS + ("pseudo-label",) else "supervised")


TEACHER = Output("teacher.safetensors", "teacher")


def export(
    out: Path, nets: Networks, data: DataSetup, recipe: Recipe, step: int, student: Output, teacher: Output, teacher_inputs: str
) -> dict:
    """Write the student (EMA weights if any) and a trained teacher as checkpoints; returns their paths and the
    student's sha256. `teacher_inputs` names the prediction extra a reduced teacher reads (its inputs are logits)."""
    method = recipe.method.name
    meta = checkpoint_meta(
        student.role,
        recipe.model.name,
        recipe.model.kwargs,
        data,
        recipe,
        step,
        parent=student.parent_sha256,
        extra={"method": method, "ema": nets.ema is not None, **student.extra},
    )
    paths = {"student": str(save_model(Path(out) / student.file, student_for_eval(nets), meta))}
    if nets.teacher is not None and method != "pseudo-label":
        name, kwargs = teacher_architecture(recipe.model)
        tmeta = checkpoint_meta(teacher.role, name, kwargs, data, recipe, step, extra={"method": method, **teacher.extra})
        if teacher_inputs:  # its input is a logit vector, not an image
            k = data.num_classes
            tmeta = dataclasses.replace(
                tmeta,
                input_shape=[k],
                input_spec={"kind": "vector", "encoding": teacher_inputs, "shape": [k], "dtype": "float32"},
                normalisation={"name": "none", "mean": [0.0], "std": [1.0]},
                augment={"kind": "none", "image_size": 1},
            )
        paths["teacher"] = str(save_model(Path(out) / teacher.file, nets.teacher, tmeta))
    log.info("wrote " + ", ".join(paths.values()))
    paths["student_sha256"] = file_sha256(Path(paths["student"]))
    return paths
