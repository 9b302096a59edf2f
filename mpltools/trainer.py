"""The training loop behind `mpl train` and `mpl finetune`: MPL or a baseline, with resume
states, metrics, periodic evaluation, signals and checkpoint export.

`fit` reads top to bottom: runtime -> data -> networks -> (resume) -> loop -> export.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mpltools import __version__, log, preflight, tracking
from mpltools import runtime as rt
from mpltools.checkpoint import (
    file_sha256,
    load_model,
    load_optimizer_tensors,
    load_state,
    optimizer_tensors,
    save_model,
    save_state,
)
from mpltools.config import Recipe
from mpltools.data.hidden_labels import find_hidden_labels
from mpltools.data.loaders import eval_batches, to_model_input
from mpltools.errors import Interrupted, MplError, UsageError
from mpltools.evaluation import evaluate
from mpltools.methods import STEPS
from mpltools.methods.common import MPLHyper, Networks, NonFiniteError
from mpltools.methods.feedback_window import CollapseWatch, FeedbackWindow
from mpltools.methods.optim import EMA, build_adam, build_sgd, norm_parameter_names
from mpltools.methods.precision import LossScaler
from mpltools.run_cleanup import RunFolderGuard
from mpltools.training import (
    build_network,
    checkpoint_meta,
    device_batch,
    make_streams,
    open_data,
    prepare_run_folder,
    use_channels_last,
    write_run_info,
)

TWO_NETWORKS = ("mpl", "released")


def hyper_from(recipe: Recipe) -> MPLHyper:
    m, t, s = recipe.method, recipe.teacher, recipe.student
    if m.name in TWO_NETWORKS and (t.momentum, t.nesterov, t.max_grad_norm) != (s.momentum, s.nesterov, s.max_grad_norm):
        raise UsageError(
            "[teacher] and [student] must share momentum, nesterov and max_grad_norm (the step applies one value to both, as the authors do)."
        )
    return MPLHyper(
        total_steps=recipe.schedule.steps,
        lr_schedule=recipe.schedule.lr_schedule,
        teacher_lr=t.lr,
        teacher_warmup=t.warmup_steps,
        teacher_weight_decay=t.weight_decay,
        student_lr=s.lr,
        student_warmup=s.warmup_steps,
        student_wait=s.wait_steps,
        student_weight_decay=s.weight_decay,
        momentum=s.momentum,
        nesterov=s.nesterov,
        max_grad_norm=s.max_grad_norm or None,
        ema_decay=s.ema_decay,
        label_smoothing=m.label_smoothing,
        uda_temperature=m.uda_temperature,
        uda_threshold=m.uda_threshold,
        uda_weight=m.uda_weight,
        uda_ramp_steps=m.uda_ramp_steps,
        teacher_supervised_weight=m.teacher_supervised_weight,
        pseudo_labels=m.pseudo_labels,
        pseudo_label_view=m.pseudo_label_view,
        feedback=m.feedback,
        baseline=m.baseline,
        baseline_decay=m.baseline_decay,
        feedback_bn=m.feedback_bn,
        teacher_weak_no_grad=m.teacher_weak_no_grad,
        mpl_weight=m.mpl_weight,
        feedback_sign=m.feedback_sign,
        fixmatch_threshold=m.fixmatch_threshold,
        fixmatch_weight=m.fixmatch_weight,
    )


@dataclass
class Export:
    """What `fit` writes at the end: file names and roles (finetune writes one `finetuned` file)."""

    student_file: str = "student.safetensors"
    student_role: str = ""  # "" = student for MPL/pseudo-label, supervised for the baselines
    teacher_file: str = "teacher.safetensors"
    init_student: Path | None = None  # start the student from this checkpoint (finetuning)
    parent_sha256: str = ""
    extra: dict = field(default_factory=dict)
    # Reduced MPL (`mpl reduced train`): the teacher is a `reduced_teacher` that reads this per-sample
    # extra of the (prediction) shard sets, a large teacher's stored logits, instead of the images.
    teacher_inputs: str = ""
    teacher_role: str = "teacher"
    teacher_extra: dict = field(default_factory=dict)


def fit(recipe: Recipe, out: Path, *, force: bool, command: str, export: Export | None = None) -> dict:
    export = export or Export()
    method = recipe.method.name
    reduced = bool(export.teacher_inputs)  # Reduced MPL: the teacher reads stored predictions (commands/reduced.py)
    if method in TWO_NETWORKS and (recipe.model.teacher_name == "reduced_teacher") != reduced:
        raise UsageError(
            'model.teacher_name = "reduced_teacher" is the teacher of Reduced MPL, which reads a large teacher\'s '
            "stored predictions: train it with `mpl reduced train RECIPE` (see recipes/reduced_b7_yfcc.toml)."
            if not reduced
            else 'Reduced MPL needs model.teacher_name = "reduced_teacher".'
        )
    trackers = tracking.requested(recipe.runtime)
    tracking.check(trackers)  # first: before the data are opened and the run folder is written
    runtime = rt.start(recipe.runtime.mixed_precision, recipe.runtime.threads, recipe.runtime.seed)
    data = open_data(recipe, need_unlabeled=method != "supervised")
    preflight.check_training(recipe, data, runtime, export.init_student, (export.teacher_inputs,) if reduced else ())
    with RunFolderGuard(out, force, runtime.is_main) as guard:  # a new run that fails before its first state leaves nothing
        resume_from = guard.prepared(prepare_run_folder(out, recipe, force, runtime.is_main))
        runtime.barrier()
        return _train(recipe, out, command, export, runtime, data, trackers, resume_from)


def _train(recipe: Recipe, out: Path, command: str, export: Export, runtime, data, trackers, resume_from) -> dict:
    method, reduced = recipe.method.name, bool(export.teacher_inputs)
    hp = hyper_from(recipe)

    # Networks. Baselines train one network, called the student; pseudo-label adds a fixed teacher.
    device = runtime.device
    torch.manual_seed(recipe.runtime.seed)  # every process builds identical initial networks
    student = build_network(recipe.model.name, recipe.model.kwargs, data).to(device)
    if export.init_student is not None:
        student.load_state_dict(load_model(export.init_student)[0].state_dict())
    teacher_name = recipe.model.teacher_name or recipe.model.name
    teacher_kwargs = recipe.model.teacher_kwargs or (recipe.model.kwargs if not recipe.model.teacher_name else {})
    teacher, teacher_opt = None, None
    if method in TWO_NETWORKS:
        shape = (data.num_classes,) if reduced else None
        teacher = build_network(teacher_name, teacher_kwargs, data, input_shape=shape).to(device)
    elif method == "pseudo-label":
        teacher, teacher_meta = load_model(recipe.method.teacher_checkpoint, device)
        teacher_name, teacher_kwargs = teacher_meta.architecture, teacher_meta.architecture_kwargs
        if teacher_meta.num_classes != data.num_classes:
            raise MplError(
                f"{recipe.method.teacher_checkpoint} predicts {teacher_meta.num_classes} classes, the data has {data.num_classes}."
            )
        teacher.eval().requires_grad_(False)
    channels_last = use_channels_last(recipe.runtime.channels_last, data, student, teacher)
    if channels_last:
        for net in (student, teacher):
            if net is not None:
                net.to(memory_format=torch.channels_last)
    if recipe.runtime.compile:
        # In-place `Module.compile` keeps parameter names, so checkpoints and resume states are unchanged.
        # Donated buffers forbid a second backward through one graph, which the diagnostics of logging steps
        # (separate autograd.grad calls per loss term) and soft labels' double backward need.
        import torch._functorch.config as functorch_config

        functorch_config.donated_buffer = False
        for net in (student, teacher):
            if net is not None:
                net.compile()
    s_no_decay = norm_parameter_names(student)
    student_opt = build_sgd(student, hp.student_lr, hp.momentum, hp.nesterov, hp.student_weight_decay, s_no_decay)
    t_no_decay = frozenset()
    if method in TWO_NETWORKS:
        t_no_decay = norm_parameter_names(teacher)
        if recipe.teacher.optimizer == "adam":  # a study option, see build_adam
            teacher_opt = build_adam(teacher, hp.teacher_lr, hp.teacher_weight_decay, t_no_decay)
        else:
            teacher_opt = build_sgd(teacher, hp.teacher_lr, hp.momentum, hp.nesterov, hp.teacher_weight_decay, t_no_decay)
    ema = EMA(student, hp.ema_decay) if hp.ema_decay > 0 else None
    nets = Networks(
        teacher,
        student,
        teacher_opt,
        student_opt,
        ema,
        None,
        t_no_decay,
        s_no_decay,
        *_loss_scalers(recipe, runtime.mixed_precision, teacher_opt is not None),
    )
    rt.seed_everything(recipe.runtime.seed, runtime.rank)  # dropout masks: independent per process
    generator = torch.Generator(device=device)
    generator.manual_seed(recipe.runtime.seed * 7919 + runtime.rank)

    step = 0
    if resume_from is not None:
        step = _restore(resume_from, nets, generator, runtime)
        log.info(f"resuming {out} from step {step} ({resume_from.name})")
    if runtime.is_main:
        write_run_info(
            out,
            {
                "command": command,
                "start_step": step,
                "world_size": runtime.world,
                "device": str(device),
                "mixed_precision": runtime.mixed_precision,
                "mpltools": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "seed": recipe.runtime.seed,
            },
        )
        log.truncate_metrics(out / "metrics.jsonl", step)
    metrics_file = log.MetricsWriter(out / "metrics.jsonl") if runtime.is_main else None
    tracker = tracking.start(trackers, out, recipe.to_dict()) if runtime.is_main else None

    labeled_stream, unlabeled_stream = make_streams(
        data,
        recipe,
        runtime.rank,
        runtime.world,
        step,
        method != "supervised",
        extras=(export.teacher_inputs,) if reduced else (),
        hidden_labels=find_hidden_labels(data.unlabeled, data.classes),
    )
    step_fn = STEPS[method]
    total, every = recipe.schedule.steps, recipe.runtime.log_every
    images_per_step = recipe.data.batch_size * (1 + (2 * recipe.data.unlabeled_ratio if method != "supervised" else 0))
    wait_time, window_start, window_steps = 0.0, time.perf_counter(), 0
    h_window, collapse_watch = FeedbackWindow(), CollapseWatch()
    with (
        rt.StopSignal() as stop,
        log.progress(f"train {method}", total=total, unit="steps", enabled=runtime.is_main, start=step) as bar,
    ):
        while step < total:
            t0 = time.perf_counter()
            lab = next(labeled_stream)
            unl = next(unlabeled_stream) if unlabeled_stream else None
            wait_time += time.perf_counter() - t0
            batch = device_batch(lab, unl, data, device, channels_last, export.teacher_inputs)
            logging = (step + 1) % every == 0 or step + 1 == total  # diagnostics are computed on logging steps only
            try:
                with runtime.autocast():
                    metrics = step_fn(nets, batch, step, hp, runtime.reducer, generator, diagnose=logging)
            except NonFiniteError as exc:
                raise MplError(
                    f"{out}: training stopped at step {exc.step}: {exc.term} is not finite ({exc.value}); the update "
                    "it would have caused was not applied and nothing of this step was saved. "
                    "Lower the learning rates or check the data."
                ) from None
            if "feedback/h" in metrics:
                h_window.add(metrics["feedback/h"].detach())
            step += 1
            window_steps += 1
            if step % every == 0 or step == total:
                elapsed = time.perf_counter() - window_start
                record = {
                    "step": step,
                    **{k: float(v) for k, v in metrics.items() if v.dim() == 0},
                    "throughput/images_per_s": images_per_step * window_steps / max(elapsed, 1e-9),
                    "data/wait_fraction": wait_time / max(elapsed, 1e-9),
                    **h_window.summary(),
                }
                collapsed = (
                    collapse_watch.check(metrics["hist/pseudo_labels"].tolist(), data.classes)
                    if "hist/pseudo_labels" in metrics
                    else None
                )
                if collapsed and runtime.is_main:
                    log.warn(f"step {step}: {collapsed}")
                if data.val is not None and recipe.eval.every and step % recipe.eval.every == 0 and step != total:
                    record.update(_validate(nets, data, recipe, runtime, with_teacher=not reduced))
                if metrics_file:
                    metrics_file.write(record)
                    if tracker:
                        tracker.log(record, step=step)
                bar.advance(window_steps, items=None, extra=_summary(record))
                wait_time, window_start, window_steps = 0.0, time.perf_counter(), 0
            if step % recipe.checkpoint.every == 0 and step != total:
                _save(out, step, nets, generator, runtime, recipe)
            if stop.requested:
                _save(out, step, nets, generator, runtime, recipe)
                raise Interrupted(f"stopped at step {step}; state saved in {out}/state/. Re-run the same command to resume.")

    _save(out, step, nets, generator, runtime, recipe)
    final = _validate(nets, data, recipe, runtime, with_teacher=not reduced) if data.val is not None else {}
    paths = {}
    if runtime.is_main:
        if final:
            metrics_file.write({"step": step, "final": True, **final})
        metrics_file.close()
        paths = _export(out, nets, data, recipe, step, method, teacher_name, teacher_kwargs, export)
    runtime.barrier()
    if tracker:
        tracker.finish()
    return {"run": str(out), "step": step, **paths, **final}


def _loss_scalers(recipe: Recipe, mixed_precision: str, teacher_trained: bool) -> tuple:
    """(teacher scaler, student scaler): fp16 needs loss scaling, one scaler per trained network."""
    if mixed_precision != "fp16":
        return None, None
    make = lambda: LossScaler(recipe.runtime.loss_scale_init, growth_interval=recipe.runtime.loss_scale_growth_interval)  # noqa: E731
    return (make() if teacher_trained else None), make()


def _summary(record: dict) -> str:
    keys = (
        ("throughput/images_per_s", "img/s"),
        ("teacher/loss", "T"),
        ("student/loss", "S"),
        ("feedback/h", "h"),
        ("diag/pl_entropy_norm", "plH"),
        ("val/student_top1", "val"),
    )
    return " ".join(f"{short}={record[k]:.4g}" for k, short in keys if k in record)


def _student_for_eval(nets: Networks) -> torch.nn.Module:
    if nets.ema is None:
        return nets.student
    import copy

    model = copy.deepcopy(nets.student)
    nets.ema.copy_to(model)
    return model


def _validate(nets: Networks, data, recipe: Recipe, runtime, with_teacher: bool = True) -> dict:
    def batches():
        return eval_batches(data.val, data.augment, recipe.eval.batch_size, runtime.rank, runtime.world)

    channels_last = use_channels_last(recipe.runtime.channels_last, data, nets.student)
    prep = lambda x: to_model_input(x, data.norm_tuple(), runtime.device, channels_last)  # noqa: E731
    out = {}
    for role, model in (("student", _student_for_eval(nets)), ("teacher", nets.teacher if with_teacher else None)):
        if model is None:
            continue
        result = evaluate(model, batches(), prep, data.num_classes, runtime.reducer, runtime.autocast)
        out.update({f"val/{role}_top1": result["top1"], f"val/{role}_loss": result["loss"]})
    return out


def _groups(nets: Networks, generator, runtime) -> dict:
    groups = {
        "student": nets.student.state_dict(),
        "student_opt": optimizer_tensors(nets.student_opt),
        "baseline": {"baseline": nets.baseline.reshape(1)},
    }
    if nets.teacher is not None:
        groups["teacher"] = nets.teacher.state_dict()
    if nets.teacher_opt is not None:
        groups["teacher_opt"] = optimizer_tensors(nets.teacher_opt)
    if nets.ema is not None:
        groups["ema"] = nets.ema.state_dict()
    return groups


def _rng_group(generator, runtime) -> dict:
    return {**rt.rng_state(runtime.device), "generator": generator.get_state()}


def _save(out: Path, step: int, nets: Networks, generator, runtime, recipe: Recipe) -> None:
    """Every process saves its RNG state; the main process writes and commits the state folder."""
    pending = Path(out) / "state" / ".pending_rng"
    if runtime.world > 1:
        from mpltools.stwrite import write_safetensors

        if runtime.is_main:
            pending.mkdir(parents=True, exist_ok=True)
        runtime.barrier()
        write_safetensors(
            pending / f"rank_{runtime.rank}.safetensors",
            {k: v.cpu().contiguous() for k, v in _rng_group(generator, runtime).items()},
        )
        runtime.barrier()
    if runtime.is_main:
        groups = _groups(nets, generator, runtime)
        groups["rng_rank_0"] = _rng_group(generator, runtime)
        extra = {f"rng_rank_{r}.safetensors": pending / f"rank_{r}.safetensors" for r in range(1, runtime.world)}
        scalers = {
            name: scaler.state_dict()
            for name, scaler in (("teacher", nets.teacher_scaler), ("student", nets.student_scaler))
            if scaler is not None
        }
        save_state(
            out,
            step,
            groups,
            {
                "step": step,
                "world_size": runtime.world,
                "positions": {"labeled": step, "unlabeled": step},
                "loss_scalers": scalers,
            },
            recipe.checkpoint.keep_last,
            extra_files=extra,
        )
    runtime.barrier()


def _restore(folder: Path, nets: Networks, generator, runtime) -> int:
    groups, scalars = load_state(folder)
    if scalars.get("world_size", 1) != runtime.world:
        log.warn(
            f"{folder} was saved by {scalars.get('world_size')} process(es), this run has {runtime.world}: "
            "it resumes, but not bitwise like the uninterrupted run."
        )
    nets.student.load_state_dict(groups["student"])
    load_optimizer_tensors(nets.student_opt, groups["student_opt"])
    nets.baseline.copy_(groups["baseline"]["baseline"].reshape(()))
    if nets.teacher_opt is not None:
        nets.teacher.load_state_dict(groups["teacher"])
        load_optimizer_tensors(nets.teacher_opt, groups["teacher_opt"])
    if nets.ema is not None:
        nets.ema.load_state_dict(groups["ema"])
    for name, scaler in (("teacher", nets.teacher_scaler), ("student", nets.student_scaler)):
        if scaler is not None and name in scalars.get("loss_scalers", {}):
            scaler.load_state_dict(scalars["loss_scalers"][name])
    rng = groups.get(f"rng_rank_{runtime.rank}")
    if rng is not None:
        rt.set_rng_state(rng, runtime.device)
        generator.set_state(rng["generator"])
    return int(scalars["step"])


def _export(
    out: Path,
    nets: Networks,
    data,
    recipe: Recipe,
    step: int,
    method: str,
    teacher_name: str,
    teacher_kwargs: dict,
    export: Export,
) -> dict:
    student = _student_for_eval(nets)
    role = export.student_role or ("student" if method in TWO_NETWORKS + ("pseudo-label",) else "supervised")
    meta = checkpoint_meta(
        role,
        recipe.model.name,
        recipe.model.kwargs,
        data,
        recipe,
        step,
        parent=export.parent_sha256,
        extra={"method": method, "ema": nets.ema is not None, **export.extra},
    )
    paths = {"student": str(save_model(Path(out) / export.student_file, student, meta))}
    if nets.teacher is not None and method != "pseudo-label":
        tmeta = checkpoint_meta(
            export.teacher_role,
            teacher_name,
            teacher_kwargs,
            data,
            recipe,
            step,
            extra={"method": method, **export.teacher_extra},
        )
        if export.teacher_inputs:  # its input is a logit vector, not an image
            k = data.num_classes
            tmeta = dataclasses.replace(
                tmeta,
                input_shape=[k],
                input_spec={"kind": "vector", "encoding": export.teacher_inputs, "shape": [k], "dtype": "float32"},
                normalisation={"name": "none", "mean": [0.0], "std": [1.0]},
                augment={"kind": "none", "image_size": 1},
            )
        paths["teacher"] = str(save_model(Path(out) / export.teacher_file, nets.teacher, tmeta))
    log.info("wrote " + ", ".join(paths.values()))
    paths["student_sha256"] = file_sha256(Path(paths["student"]))
    return paths
