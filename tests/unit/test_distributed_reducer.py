"""Two gloo processes, each with half of a global batch, train exactly like one process with
the whole batch (TorchDistributedReducer: global h, global gradients, global metrics).

Deterministic setting: MLPs without BN or dropout, argmax or soft pseudo labels, float64.
"""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mpltools.methods import Batch, MPLHyper, Networks, TorchDistributedReducer, build_sgd, mpl_step

CONFIGS = {
    "dot-argmax": dict(feedback="dot", pseudo_labels="argmax"),
    "taylor-soft": dict(feedback="taylor", pseudo_labels="soft"),
    "cosine-argmax-weak": dict(feedback="cosine", pseudo_labels="argmax", pseudo_label_view="weak"),
}
STEPS = 3


def _hp(**kw):
    return MPLHyper(
        total_steps=20,
        teacher_lr=0.1,
        teacher_warmup=2,
        student_lr=0.2,
        student_warmup=1,
        student_wait=0,
        uda_weight=2.0,
        uda_ramp_steps=0,
        uda_threshold=0.4,
        uda_temperature=0.7,
        label_smoothing=0.1,
        baseline=True,
        ema_decay=0.0,
        **kw,
    )


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def _global_batch(step):
    g = torch.Generator().manual_seed(100 + step)
    x_u = torch.randn(16, 5, generator=g, dtype=torch.float64)
    return Batch(
        torch.randn(8, 5, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (8,), generator=g),
        x_u + 0.1 * torch.randn(x_u.shape, generator=g, dtype=torch.float64),
        x_u + 0.5 * torch.randn(x_u.shape, generator=g, dtype=torch.float64),
    )


def _shard(batch, rank, world):
    def part(t):
        n = t.shape[0] // world
        return t[rank * n : (rank + 1) * n]

    return Batch(part(batch.labeled_x), part(batch.labeled_y), part(batch.unlabeled_weak), part(batch.unlabeled_strong))


def _train(config, reducer=None, rank=0, world=1):
    hp = _hp(**CONFIGS[config])
    teacher, student = _mlp(0), _mlp(1)
    nets = Networks(
        teacher,
        student,
        build_sgd(teacher, hp.teacher_lr, weight_decay=1e-3),
        build_sgd(student, hp.student_lr, weight_decay=1e-3),
    )
    history = []
    for step in range(STEPS):
        batch = _shard(_global_batch(step), rank, world)
        out = mpl_step(nets, batch, step, hp, **({"reducer": reducer} if reducer else {}))
        history.append({k: v.clone() for k, v in out.items()})
    weights = {**{f"t.{k}": v for k, v in teacher.state_dict().items()}, **{f"s.{k}": v for k, v in student.state_dict().items()}}
    return history, weights


def _worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        results = {c: _train(c, TorchDistributedReducer(), rank, world) for c in CONFIGS}
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


def test_two_processes_with_half_batches_equal_one_process_with_the_full_batch(tmp_path):
    out_file = tmp_path / "dist.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    distributed = torch.load(out_file)
    for config in CONFIGS:
        history, weights = _train(config)
        d_history, d_weights = distributed[config]
        for step, (single, multi) in enumerate(zip(history, d_history)):
            for key, value in single.items():
                assert torch.allclose(multi[key].double(), value.double(), rtol=1e-9, atol=1e-12), (config, step, key)
            assert single["feedback/h"].abs() > 0  # the comparison is not between zeros
        for key, value in weights.items():
            assert torch.allclose(d_weights[key], value, rtol=1e-9, atol=1e-12), (config, key)
