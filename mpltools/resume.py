"""Resume states of a training run (`RUN/state/step_<N>/`, DESIGN §3): what is saved, and how a run restarts from it.

A state holds both networks and optimisers, the EMA, the feedback baseline, the fp16 loss scalers, every
process's RNG states, the data streams' positions and the loop's bookkeeping (`loop_log.Interval.state`: the
open window of h values, the collapse watch), so a resumed run logs exactly what the uninterrupted run logs. `save` is called by every process (each saves its
RNG state; the main process writes and commits the folder); `restore` returns the step to continue from.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mpltools import log
from mpltools import runtime as rt
from mpltools.checkpoint import load_optimizer_tensors, load_state, optimizer_tensors, save_state
from mpltools.errors import MplError
from mpltools.methods.common import Networks

# The state's layout. 1 (state.json without "format_version"): no loop bookkeeping. 2: the "loop" group holds the
# h values of the open logging window (float64), state.json's "loop" the collapse watch.
FORMAT_VERSION = 2


def save(out: Path, step: int, nets: Networks, generator: torch.Generator, runtime, keep_last: int, loop: dict) -> None:
    """Every process saves its RNG state; the main process writes and commits the state folder (with `loop`, the main
    process's `Interval.state()`), keeping the newest `keep_last` states."""
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
        groups = _network_groups(nets)
        groups["rng_rank_0"] = _rng_group(generator, runtime)
        groups["loop"] = {"h_window": torch.tensor(loop["h_window"], dtype=torch.float64)}
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
                "format_version": FORMAT_VERSION,
                "step": step,
                "world_size": runtime.world,
                "positions": {"labeled": step, "unlabeled": step},
                "loss_scalers": scalers,
                "loop": {"collapsed": loop["collapsed"]},
            },
            keep_last,
            extra_files=extra,
        )
    runtime.barrier()


def restore(folder: Path, nets: Networks, generator: torch.Generator, runtime) -> tuple[int, dict | None]:
    """Load the state in `folder` into `nets`, this process's RNGs and `generator`; return its step and the loop's
    bookkeeping for `Interval.load` (None from a version-1 state, which has none: the loop starts it afresh)."""
    groups, scalars = load_state(folder)
    version = scalars.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise MplError(f"{folder} has resume state format version {version}; this mpltools reads up to {FORMAT_VERSION}.")
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
    if "loop" not in groups:
        log.warn(
            f"{folder} was saved by an older mpltools without the loop's bookkeeping: the run resumes bitwise, but the "
            "diag/h_* values of its next logged step cover only the steps after the resume."
        )
        return int(scalars["step"]), None
    loop = {"h_window": groups["loop"]["h_window"].tolist(), "collapsed": scalars["loop"]["collapsed"]}
    return int(scalars["step"]), loop


def _network_groups(nets: Networks) -> dict:
    """The tensors of the networks, their optimisers, the EMA and the feedback baseline, one group each."""
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


def _rng_group(generator: torch.Generator, runtime) -> dict:
    return {**rt.rng_state(runtime.device), "generator": generator.get_state()}
