"""Where a command runs: the Accelerator, process guards, seeding and autocast (signals: `mpltools.signals`)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from mpltools.errors import MplError
from mpltools.reducer import LOCAL, Reducer, TorchDistributedReducer


@dataclass
class Runtime:
    accelerator: object
    device: torch.device
    rank: int
    world: int
    is_main: bool
    mixed_precision: str  # "no" | "bf16" | "fp16"
    reducer: Reducer

    def autocast(self):
        """The precision region of one training step or evaluation batch.

        Autocast's weight cache is OFF: inside one region it would keep serving the low-precision
        copy of a weight made before an in-place update (the MPL step updates the student, then
        measures it), see `mpltools.methods.precision`.
        """
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mixed_precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype, cache_enabled=False)

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()

    def gather_to_main(self, obj) -> list | None:
        """Every process's `obj` (picklable; it travels inside this job only), in rank order, on the main
        process; None elsewhere."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def on_main(self, fn):
        """Run `fn()` on the main process only (e.g. writing the output); then every process returns
        its result (None off the main process) or raises, so no process waits for a failed one."""
        result, failure = None, None
        if self.is_main:
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised below after the others are told
                failure = exc
        if self.world > 1:
            import torch.distributed as dist

            box = [None if failure is None else (failure.message if isinstance(failure, MplError) else repr(failure))]
            dist.broadcast_object_list(box, src=0)
            if box[0] is not None and not self.is_main:
                raise MplError(f"the main process failed: {box[0]}")
        if failure is not None:
            raise failure
        self.finish()
        return result

    def finish(self) -> None:
        """Leave the process group together (a process that exits while a peer's gloo threads still talk to
        it can abort with "terminate called without an active exception")."""
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.barrier()
                dist.destroy_process_group()


_UNSYNCHRONISED = (
    "this process was launched as one of {world} (WORLD_SIZE) but found {got}, so the processes would train "
    "unsynchronised; refusing to start. Launch with `accelerate launch --multi_gpu --num_processes N mpl train ...` "
    "(on CPU add ACCELERATE_USE_CPU=1) or `torchrun --nproc_per_node N -m mpltools train ...`."
)


def native_bf16(device: torch.device) -> bool:
    """Whether a CUDA device computes in bfloat16 natively (compute capability 8.0+: A100, H100, RTX 30xx...).

    `torch.cuda.is_bf16_supported()` also says yes for emulated bf16 (T4, V100), which is slow."""
    if device.type != "cuda":
        return False
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_mixed_precision(requested: str, device: torch.device) -> str:
    """ "auto": bf16 on a GPU with native bf16, else fp32 ("no"; on T4/V100 choose "fp16" yourself).
    "bf16" and "fp16" are honoured on the CPU too (CPU autocast; slow, but the same code path)."""
    if requested == "auto":
        return "bf16" if native_bf16(device) else "no"
    if requested == "bf16" and device.type == "cuda" and not native_bf16(device):
        raise MplError(
            'runtime.mixed_precision = "bf16" but this GPU has no native bfloat16 (compute capability < 8.0); '
            'use "fp16" (with loss scaling) or "no".',
            exit_code=2,
        )
    return requested


def start(mixed_precision: str = "auto", threads: int = 0, seed: int = 0) -> Runtime:
    from accelerate import Accelerator

    # Without CUDA, `accelerate launch --multi_gpu` starts N processes that do not talk to each
    # other unless the Accelerator is told to use the CPU (gloo); we always tell it.
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    if world_env > 1 and not os.environ.get("MASTER_ADDR"):
        raise MplError(_UNSYNCHRONISED.format(world=world_env, got="no process group (MASTER_ADDR is not set)"))
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    if world_env != accelerator.num_processes:
        raise MplError(_UNSYNCHRONISED.format(world=world_env, got=f"{accelerator.num_processes} process(es) in Accelerate"))
    if threads > 0:
        torch.set_num_threads(threads)
    world = accelerator.num_processes
    reducer = TorchDistributedReducer() if world > 1 else LOCAL
    device = accelerator.device
    seed_everything(seed, accelerator.process_index)
    return Runtime(
        accelerator,
        device,
        accelerator.process_index,
        world,
        accelerator.is_main_process,
        resolve_mixed_precision(mixed_precision, device),
        reducer,
    )


def default_workers(runtime: Runtime) -> int:
    """Decoding workers for the inference commands: none on CPU (the model needs the cores), else up to
    8 per process."""
    if runtime.device.type == "cpu":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // runtime.world - 1))


# ---------------------------------------------------------------- seeds of a training run


def seed_initial_networks(seed: int) -> None:
    """Before the networks are built: every process builds identical initial networks."""
    torch.manual_seed(seed)


def seed_everything(seed: int, rank: int) -> None:
    # Dropout masks differ across processes (as with independent replicas); everything else that
    # must agree across processes (data order, augmentation) is seeded without the rank.
    torch.manual_seed(seed * 1000 + rank)


def seed_training(seed: int, rank: int, device: torch.device) -> torch.Generator:
    """After the networks are built: the global RNG per process (`seed_everything`), and the generator of the
    steps' own draws (pseudo labels sampled from the teacher), also one per process."""
    seed_everything(seed, rank)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 7919 + rank)
    return generator


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)
