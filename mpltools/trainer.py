"""The training loop behind `mpl train`, `mpl finetune` and `mpl reduced train`: MPL or a baseline, with
resume states, metrics, periodic evaluation, signals and checkpoint export.

`fit` reads top to bottom: checks -> runtime -> data -> run folder -> networks -> (resume) -> loop -> export.
The pieces have their own modules: `train_data` (streams, batches), `networks` (building, export),
`run_folder`, `resume` (resume states), `loop_log` (metrics), `preflight` (the checks).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from mpltools import log, preflight, resume, warm_start
from mpltools import runtime as rt
from mpltools.config import Recipe
from mpltools.data.hidden_labels import find_hidden_labels
from mpltools.data.loaders import eval_batches, to_model_input
from mpltools.errors import Interrupted, MplError
from mpltools.evaluation import evaluate
from mpltools.loop_log import Interval, RunLog
from mpltools.methods import STEPS
from mpltools.methods.common import MPLHyper, Networks, NonFiniteError, hyper_from
from mpltools.networks import TEACHER, Output, build_networks, default_student, export, student_for_eval, use_channels_last
from mpltools.run_cleanup import RunFolderGuard
from mpltools.run_folder import prepare_run_folder
from mpltools.signals import stop_requests
from mpltools.train_data import DataSetup, device_batch, make_streams, open_data

__all__ = ["Output", "fit"]


def fit(
    recipe: Recipe,
    out: Path,
    *,
    force: bool,
    command: str,
    init_student: Path | None = None,
    teacher_inputs: str = "",
    student: Output | None = None,
    teacher: Output = TEACHER,
    warm: warm_start.WarmStart | None = None,
) -> dict:
    """Train `recipe` in the run folder `out` (resuming the run there); return the run's report.

    `init_student`: the student starts from this checkpoint (finetuning). `teacher_inputs`: the per-sample extra of
    the (prediction) shard sets the teacher reads instead of the images (Reduced MPL). `student` and `teacher`: the
    checkpoints written at the end (default `default_student(method)` and `teacher.safetensors`). `warm`: a new run
    starts from another run's networks (`warm_start`)."""
    method, extras = recipe.method.name, (teacher_inputs,) if teacher_inputs else ()
    trackers = preflight.check_trackers(recipe)  # first: before the data are opened and the run folder is written
    runtime = rt.start(recipe.runtime.mixed_precision, recipe.runtime.threads, recipe.runtime.seed)
    data = open_data(recipe, need_unlabeled=method != "supervised")
    preflight.check_training(recipe, data, runtime, init_student, extras)
    if warm is not None:
        warm_start.check(warm, recipe, data)
    with RunFolderGuard(out, force, runtime.is_main) as guard:  # a new run that fails before its first state leaves nothing
        resume_from = guard.prepared(prepare_run_folder(out, recipe, force, runtime.is_main, runtime.barrier))
        if warm is not None and resume_from is not None:
            warm = warm_start.resuming(out, warm)  # the same command after an interruption, else refused
        runtime.barrier()
        hp = hyper_from(recipe)
        nets = build_networks(recipe, hp, data, runtime, init_student, reduced=bool(teacher_inputs))
        generator = rt.seed_training(recipe.runtime.seed, runtime.rank, runtime.device)
        step, interval = 0, Interval(recipe)
        if resume_from is not None:
            step, loop = resume.restore(resume_from, nets, generator, runtime)
            if loop is not None:
                interval.load(loop)
            log.info(f"resuming {out} from step {step} ({resume_from.name})")
        elif warm is not None:
            warm_start.apply(warm, nets, hp.ema_decay)
            step = warm.start_step
        run_log = RunLog(out, recipe, runtime, command, step, trackers, warm.provenance() if warm else {})
        step = _loop(recipe, hp, nets, data, runtime, generator, run_log, interval, out, step, teacher_inputs)
        resume.save(out, step, nets, generator, runtime, recipe.checkpoint.keep_last, interval.state())
        final = _validate(nets, data, recipe, runtime, with_teacher=not teacher_inputs) if data.val is not None else {}
        paths = {}
        if runtime.is_main:
            run_log.close(step, final)
            init = warm_start.recorded(out)  # the provenance of a warm start, resumed or not
            student, teacher = (_with_extra(o, init) for o in (student or default_student(method), teacher))
            paths = export(out, nets, data, recipe, step, student, teacher, teacher_inputs)
        runtime.barrier()
        run_log.finish_trackers()
        return {"run": str(out), "step": step, **paths, **final}


def _loop(
    recipe: Recipe,
    hp: MPLHyper,
    nets: Networks,
    data: DataSetup,
    runtime,
    generator,
    run_log: RunLog,
    interval: Interval,
    out: Path,
    step: int,
    teacher_inputs: str,
) -> int:
    """Steps from `step` to the recipe's last: log every runtime.log_every steps, validate every eval.every steps,
    commit a resume state every checkpoint.every steps and on SIGINT/SIGTERM (then raise Interrupted). `interval`
    holds the open logging interval (restored on resume). Returns the last step."""
    method, total, every = recipe.method.name, recipe.schedule.steps, recipe.runtime.log_every
    labeled_stream, unlabeled_stream = make_streams(
        data,
        recipe,
        runtime.rank,
        runtime.world,
        step,
        method != "supervised",
        extras=(teacher_inputs,) if teacher_inputs else (),
        hidden_labels=find_hidden_labels(data.unlabeled, data.classes),
    )
    channels_last = use_channels_last(recipe.runtime.channels_last, data, nets.student, nets.teacher)
    step_fn = STEPS[method]
    interval.restart()  # its timings start with the loop
    with (
        stop_requests() as stop,
        log.progress(f"train {method}", total=total, unit="steps", enabled=runtime.is_main, start=step) as bar,
    ):
        while step < total:
            t0 = time.perf_counter()
            lab = next(labeled_stream)
            unl = next(unlabeled_stream) if unlabeled_stream else None
            interval.waited(time.perf_counter() - t0)
            batch = device_batch(lab, unl, data, runtime.device, channels_last, teacher_inputs)
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
            step += 1
            interval.stepped(metrics)
            if step % every == 0 or step == total:
                record = interval.record(step, metrics)
                collapsed = interval.collapsed(metrics, data.classes)
                if collapsed and runtime.is_main:
                    log.warn(f"step {step}: {collapsed}")
                if data.val is not None and recipe.eval.every and step % recipe.eval.every == 0 and step != total:
                    record.update(_validate(nets, data, recipe, runtime, with_teacher=not teacher_inputs))
                run_log.write(record)
                bar.advance(interval.steps, items=None, extra=_summary(record))
                interval.restart()
            if step % recipe.checkpoint.every == 0 and step != total:
                resume.save(out, step, nets, generator, runtime, recipe.checkpoint.keep_last, interval.state())
            if stop.requested:
                resume.save(out, step, nets, generator, runtime, recipe.checkpoint.keep_last, interval.state())
                raise Interrupted(f"stopped at step {step}; state saved in {out}/state/. Re-run the same command to resume.")
    return step


def _with_extra(output: Output, extra: dict) -> Output:
    return dataclasses.replace(output, extra={**output.extra, **extra}) if extra else output


def _summary(record: dict) -> str:
    keys = (
        ("throughput/images_per_s", "img/s"),
        ("data/fetch_MB_per_s", "MB/s"),
        ("data/shards_fetched", "shards"),
        ("teacher/loss", "T"),
        ("student/loss", "S"),
        ("feedback/h", "h"),
        ("diag/pl_entropy_norm", "plH"),
        ("val/student_top1", "val"),
    )
    return " ".join(f"{short}={record[k]:.4g}" for k, short in keys if k in record)


def _validate(nets: Networks, data: DataSetup, recipe: Recipe, runtime, with_teacher: bool = True) -> dict:
    """Top-1 and loss of the student (EMA weights if any) and, `with_teacher`, the teacher on data.val."""

    def batches():
        return eval_batches(data.val, data.augment, recipe.eval.batch_size, runtime.rank, runtime.world)

    channels_last = use_channels_last(recipe.runtime.channels_last, data, nets.student)
    prep = lambda x: to_model_input(x, data.norm_tuple(), runtime.device, channels_last)  # noqa: E731
    out = {}
    for role, model in (("student", student_for_eval(nets)), ("teacher", nets.teacher if with_teacher else None)):
        if model is None:
            continue
        result = evaluate(model, batches(), prep, data.num_classes, runtime.reducer, runtime.autocast)
        out.update({f"val/{role}_top1": result["top1"], f"val/{role}_loss": result["loss"]})
    return out
