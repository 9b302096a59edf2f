"""Cost of `mpl data filter-unlabeled`, `mpl eval` and a Reduced MPL step (a benchmark, not a test).

    python benchmarks/filter_eval.py [--repeats 3] [--json benchmarks/out/filter_eval.json]

* filter / inference: `data filter-unlabeled --top-k 125 --exclude <500-image set>` (keeps ~25%;
  also with `--near-duplicates`, and with `--workers 1`: decoding in a second process) on 5,000 32x32
  PNGs (10 classes), in this process, one torch thread (start-up, loading the model and the
  exclusion set and writing the output included), against pure batched
  inference of the same model (batch 256, eval mode, no grad, normalisation + softmax + max) over
  the same images already decoded into one uint8 tensor, for a small CNN (`small_cnn`, width 16)
  and ResNet-18. Target >= 0.8.
* eval / inference: `mpl eval` on the same (labelled) set, likewise. Target >= 0.8.
* filter peak RSS at 10,000 and 100,000 samples (`python -m mpltools` children, os.wait4; an MLP
  so the 100k run is short). Target: flat (the selection is bounded by K x classes).
* reduced step / supervised step: one `mpl_step` with a `reduced_teacher` (MLP 10 -> 128 -> 10 over
  stored logits) against `supervised_step` of the student alone on the same images it trains on
  in the step (the mu*B strong views); a full MPL step (an image teacher of the same architecture)
  for comparison. ResNet-18 student at 32x32, labelled batch 8, mu = 7, as benchmarks/step.py.

Untrained networks (the cost does not depend on the weights). The synthetic sets are the ones
benchmarks/data.py builds (cached in benchmarks/out/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from mpltools import __version__, log  # noqa: E402
from mpltools.checkpoint import CheckpointMeta, save_model  # noqa: E402
from mpltools.data import transforms  # noqa: E402
from mpltools.data.codecs import decode_input  # noqa: E402
from mpltools.data.loaders import to_model_input  # noqa: E402
from mpltools.data.opening import open_shard_set  # noqa: E402
from mpltools.methods import STEPS  # noqa: E402
from mpltools.methods.common import Batch, MPLHyper, Networks  # noqa: E402
from mpltools.methods.optim import build_sgd, norm_parameter_names  # noqa: E402
from mpltools.models import build_model  # noqa: E402

OUT = ROOT / "out"
WORK = OUT / "filter_eval"
BATCH = 256
TARGET_RATIO = 0.8


def shard_set(n: int, seed: int = 0) -> Path:
    path = OUT / (f"synthetic-{n}" if seed == 0 else f"synthetic-{n}-seed{seed}")
    try:
        if open_shard_set(path).num_samples == n:
            return path
    except Exception:  # noqa: BLE001 - missing or stale cache: rebuild
        pass
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mpltools",
            "-q",
            "data",
            "import",
            "synthetic",
            "--num-samples",
            str(n),
            "--seed",
            str(seed),
            "--image-size",
            "32",
            "--out",
            str(path),
            "--force",
        ],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path


def checkpoint(name: str, kwargs: dict, data: Path) -> Path:
    shards = open_shard_set(data)
    torch.manual_seed(0)
    model = build_model(name, shards.num_classes, (3, 32, 32), **kwargs)
    mean, std = transforms.NORMALISATION["cifar10"]
    meta = CheckpointMeta(
        role="supervised",
        architecture=name,
        architecture_kwargs=kwargs,
        num_classes=shards.num_classes,
        input_shape=[3, 32, 32],
        input_spec=shards.input_spec.to_json(),
        normalisation={"name": "cifar10", "mean": list(mean), "std": list(std)},
        augment={"kind": "cifar", "image_size": 32},
        classes=shards.classes,
    )
    return save_model(WORK / f"{name}.safetensors", model, meta)


def pure_inference(ckpt: Path, data: Path):
    """Seconds for batched inference over the set's images, decoded beforehand (not timed)."""
    from mpltools.checkpoint import load_model

    model, meta = load_model(ckpt)
    model.eval()
    aug = transforms.AugmentSpec(kind="cifar", image_size=32)
    images = torch.from_numpy(np.stack([transforms.eval_view(decode_input(s), aug) for s in open_shard_set(data).samples()]))
    norm = (meta.normalisation["mean"], meta.normalisation["std"])

    def run() -> float:
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            for i in range(0, len(images), BATCH):
                probs = model(to_model_input(images[i : i + BATCH], norm, "cpu")).float().softmax(dim=1)
                probs.max(dim=1)[0].numpy()
        return time.perf_counter() - t0, time.process_time() - c0

    return run


def filter_run(ckpt: Path, data: Path, exclude: Path, near: bool, n: int, workers: int = 0):
    from mpltools.commands import data_filter

    rule = data_filter.Rule(top_k=max(1, n // 40), near_duplicates=near)

    def run() -> float:
        t0, c0 = time.perf_counter(), time.process_time()
        data_filter.run(
            str(data), ckpt, WORK / "filtered", rule, exclude=[str(exclude)], batch_size=BATCH, force=True, workers=workers
        )
        return time.perf_counter() - t0, time.process_time() - c0

    return run


def eval_run(ckpt: Path, data: Path):
    from mpltools.commands import eval as eval_command

    def run() -> float:
        t0, c0 = time.perf_counter(), time.process_time()
        eval_command.run(ckpt, str(data), real=None, predictions=None, batch_size=BATCH, force=True, command="bench")
        return time.perf_counter() - t0, time.process_time() - c0

    return run


def best(fns: dict, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """(wall, CPU) seconds: the best of `repeats` interleaved runs of each function, after an untimed warm-up.
    CPU time (this process, all threads) is what other jobs on a shared machine disturb least."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(fn())
    return {k: min(w for w, _ in v) for k, v in times.items()}, {k: min(c for _, c in v) for k, v in times.items()}


def filter_rss(ckpt: Path, data: Path) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of `mpl data filter-unlabeled` as a child process."""
    cmd = [
        sys.executable,
        "-m",
        "mpltools",
        "-q",
        "data",
        "filter-unlabeled",
        str(data),
        "--model",
        str(ckpt),
        "--top-k",
        "100",
        "--out",
        str(WORK / "rss_out"),
        "--force",
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env={**os.environ, "CI": "true"})
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({status})")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def reduced_step(name: str, kwargs: dict, repeats: int, b: int = 8, mu: int = 7, classes: int = 10) -> dict:
    hp = MPLHyper(total_steps=10_000, teacher_warmup=0, student_warmup=0, student_wait=0, ema_decay=0.0, uda_weight=0.0)
    shape = (3, 32, 32)

    def nets(teacher):
        torch.manual_seed(0)
        s = build_model(name, classes, shape, **kwargs)
        nd = norm_parameter_names(s)
        t_opt = build_sgd(teacher, 0.1) if teacher is not None else None
        return Networks(teacher, s, t_opt, build_sgd(s, 0.05, weight_decay=5e-4, no_decay_names=nd), None, None, frozenset(), nd)

    g = torch.Generator().manual_seed(0)
    x_l, y = torch.randn(b, *shape, generator=g), torch.randint(0, classes, (b,), generator=g)
    x_u = torch.randn(mu * b, *shape, generator=g)
    reduced_batch = Batch(
        x_l, y, x_u, x_u.clone(), teacher_labeled=torch.randn(b, classes) * 3, teacher_unlabeled=torch.randn(mu * b, classes) * 3
    )
    image_batch = Batch(x_l, y, x_u, x_u.clone())
    reduced = nets(build_model("reduced_teacher", classes, (classes,), hidden=[128]))
    full = nets(build_model(name, classes, shape, **kwargs))
    alone = nets(None)
    strong_only = Batch(x_u, torch.randint(0, classes, (mu * b,), generator=g))
    counter = iter(range(10**9))
    gen = torch.Generator().manual_seed(1)

    def timed(fn):
        def run():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            return time.perf_counter() - t0, time.process_time() - c0

        return run

    fns = {
        "reduced": timed(lambda: STEPS["mpl"](reduced, reduced_batch, next(counter), hp, generator=gen)),
        "supervised": timed(lambda: STEPS["supervised"](alone, strong_only, next(counter), hp)),
        "full_mpl": timed(lambda: STEPS["mpl"](full, image_batch, next(counter), hp, generator=gen)),
    }
    wall, cpu = best(fns, repeats)
    return {
        "model": name,
        "labeled_batch": b,
        "mu": mu,
        "wall_s": wall,
        "cpu_s": cpu,
        "reduced_over_supervised": wall["reduced"] / wall["supervised"],
        "reduced_over_supervised_cpu": cpu["reduced"] / cpu["supervised"],
        "full_mpl_over_supervised": wall["full_mpl"] / wall["supervised"],
        "full_mpl_over_supervised_cpu": cpu["full_mpl"] / cpu["supervised"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--samples", type=int, default=5_000, help="images for the throughput ratios")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    ap.add_argument("--step-repeats", type=int, default=15)
    ap.add_argument("--json", type=Path, default=OUT / "filter_eval.json")
    args = ap.parse_args()
    log.set_quiet(True)
    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    n = args.samples
    bench, small, large = shard_set(n), shard_set(10_000), shard_set(100_000)
    exclude = shard_set(n // 10, seed=1)
    result = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "load_average": os.getloadavg(),
        },
        "mpltools": __version__,
        "samples": n,
        "batch": BATCH,
    }

    for model_name, kwargs in (("small_cnn", {"width": 16}), ("resnet18", {})):
        path = checkpoint(model_name, kwargs, bench)
        wall, cpu = best(
            {
                "inference": pure_inference(path, bench),
                "filter": filter_run(path, bench, exclude, False, n),
                "filter_near": filter_run(path, bench, exclude, True, n),
                "filter_1_worker": filter_run(path, bench, exclude, False, n, workers=1),
                "eval": eval_run(path, bench),
            },
            args.repeats,
        )
        row = {
            "wall_s": wall,
            "cpu_s": cpu,
            "images_per_s": {k: n / v for k, v in wall.items()},
            "ratio_wall": {k: wall["inference"] / v for k, v in wall.items() if k != "inference"},
            "ratio_cpu": {k: cpu["inference"] / v for k, v in cpu.items() if k != "inference"},
        }
        result[f"throughput_{model_name}"] = row
        print(
            f"{model_name}: inference {n / wall['inference']:,.0f} img/s | "
            + " | ".join(
                f"{k} {n / wall[k]:,.0f} img/s, ratio {row['ratio_wall'][k]:.2f} wall / {row['ratio_cpu'][k]:.2f} cpu"
                for k in wall
                if k != "inference"
            )
            + f"   (target >= {TARGET_RATIO})"
        )

    mlp = checkpoint("mlp", {"hidden": [32], "activation": "relu", "init_range": 0.0}, small)
    rss = {n: filter_rss(mlp, path) for n, path in ((10_000, small), (100_000, large))}
    result["filter_peak_rss_mb"] = {str(n): r[0] for n, r in rss.items()}
    result["filter_seconds_as_process"] = {str(n): r[1] for n, r in rss.items()}
    print(
        f"filter peak RSS: 10k {rss[10_000][0]:.0f} MB ({rss[10_000][1]:.1f} s), 100k {rss[100_000][0]:.0f} MB "
        f"({rss[100_000][1]:.1f} s): growth {rss[100_000][0] - rss[10_000][0]:+.1f} MB"
    )

    step = reduced_step("resnet18", {}, args.step_repeats)
    result["reduced_step"] = step
    print(
        f"reduced step {step['wall_s']['reduced'] * 1e3:.0f} ms vs supervised step of the student on its "
        f"{step['mu'] * step['labeled_batch']} strong images {step['wall_s']['supervised'] * 1e3:.0f} ms: "
        f"{step['reduced_over_supervised']:.2f}x wall / {step['reduced_over_supervised_cpu']:.2f}x cpu "
        f"(full MPL with an image teacher: {step['full_mpl_over_supervised']:.2f}x / {step['full_mpl_over_supervised_cpu']:.2f}x)"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(WORK / "filtered", ignore_errors=True)
    shutil.rmtree(WORK / "rss_out", ignore_errors=True)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
