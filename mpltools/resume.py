"""Resume states of a training run (`RUN/state/step_<N>/`, DESIGN §3): what is saved, and how a run restarts from it.

A state holds both networks and optimisers, the EMA, the feedback baseline, the fp16 loss scalers, every
process's RNG states and the data streams' positions. `save` is called by every process (each saves its
RNG state; the main process writes and commits the folder); `restore` returns the step to continue from.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mpltools import log
from mpltools import runtime as rt
from mpltools.checkpoint import load_optimizer_tensors, load_state, optimizer_tensors, save_state
from mpltools.methods.common import Networks


def save(out: Path, step: int, nets: Networks, generator: torch.Generator, runtime, keep_last: int) -> None:
    """Every process saves its RNG state; the main process writes and commits the state folder, keeping the newest
    `keep_last` states."""
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
            keep_last,
            extra_files=extra,
        )
    runtime.barrier()


def restore(folder: Path, nets: Networks, generator: torch.Generator, runtime) -> int:
    """Load the state in `folder` into `nets`, this process's RNGs and `generator`; return its step."""
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
