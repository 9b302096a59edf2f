"""MPL step cost (a benchmark, not a test): prints ratios and writes JSON.

For WRN-28-2 at 32x32 (labelled batch 8, mu = 7, one thread) and for the TwoMoon MLP:
  * step / passes: one `mpl_step` divided by the summed time of its own forward/backward passes
    timed separately (teacher fwd+bwd on [l; weak; strong], student fwd+bwd on strong, two
    no-grad student forwards on l). Target <= 1.05.
  * step / supervised step on the same images (one network, fwd+bwd on [l; weak; strong]).
    The pass structure alone costs about 1.5x.
  * step with `teacher_weak_no_grad` / default step.
  * peak memory (RSS growth) of the step.
  * augmentation: weak+strong views per second on one core (32x32 RGB).
  * `mpl train` on a synthetic CIFAR-like recipe: fraction of wall time waiting for data with the
    default workers. Target <= 5%.

Usage: python benchmarks/step.py [--repeats 20] [--json benchmarks/out/step.json] [--skip-train]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mpltools.data import transforms
from mpltools.methods import STEPS
from mpltools.methods.common import Batch, MPLHyper, Networks, measurement_mode
from mpltools.methods.optim import build_sgd, norm_parameter_names
from mpltools.models import build_model


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_nets(name: str, kwargs: dict, shape: tuple, classes: int, hp: MPLHyper) -> Networks:
    torch.manual_seed(0)
    t, s = build_model(name, classes, shape, **kwargs), build_model(name, classes, shape, **kwargs)
    t_nd, s_nd = norm_parameter_names(t), norm_parameter_names(s)
    return Networks(t, s, build_sgd(t, hp.teacher_lr, weight_decay=hp.teacher_weight_decay, no_decay_names=t_nd),
                    build_sgd(s, hp.student_lr, weight_decay=hp.student_weight_decay, no_decay_names=s_nd),
                    None, None, t_nd, s_nd)


def bench_model(label: str, name: str, kwargs: dict, shape: tuple, classes: int, b: int, mu: int, repeats: int) -> dict:
    hp = MPLHyper(total_steps=10_000, teacher_warmup=0, student_warmup=0, student_wait=0, ema_decay=0.0)
    nets = make_nets(name, kwargs, shape, classes, hp)
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(b, *shape), torch.randint(0, classes, (b,)), torch.randn(mu * b, *shape), torch.randn(mu * b, *shape))
    gen = torch.Generator().manual_seed(1)
    step_counter = iter(range(10**9))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step = timed(lambda: STEPS["mpl"](nets, batch, next(step_counter), hp, generator=gen), repeats)
    rss_step = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    hp_nograd = MPLHyper(**{**hp.__dict__, "teacher_weak_no_grad": True})
    step_nograd = timed(lambda: STEPS["mpl"](nets, batch, next(step_counter), hp_nograd, generator=gen), repeats)

    # The step's own passes, each timed alone.
    t, s = nets.teacher, nets.student
    all_x = torch.cat([batch.labeled_x, batch.unlabeled_weak, batch.unlabeled_strong])

    def teacher_pass():
        t.zero_grad(set_to_none=True)
        t(all_x).logsumexp(1).mean().backward()

    def student_pass():
        s.zero_grad(set_to_none=True)
        s(batch.unlabeled_strong).logsumexp(1).mean().backward()

    def measurements():
        with torch.no_grad(), measurement_mode(s, "batch"):
            s(batch.labeled_x)
            s(batch.labeled_x)

    passes = timed(teacher_pass, repeats) + timed(student_pass, repeats) + timed(measurements, repeats)
    supervised = timed(teacher_pass, repeats)  # one network, fwd+bwd on the same images (+ no optimiser)
    sup_hp = MPLHyper(total_steps=10_000, student_warmup=0, ema_decay=0.0)
    sup_batch = Batch(all_x, torch.randint(0, classes, (all_x.shape[0],)))
    sup_step = timed(lambda: STEPS["supervised"](nets, sup_batch, 0, sup_hp), repeats)
    return {
        "model": label, "labeled_batch": b, "mu": mu,
        "step_s": step, "passes_s": passes, "step_over_passes": step / passes,
        "supervised_step_s": sup_step, "step_over_supervised_step": step / sup_step,
        "supervised_passes_s": supervised, "step_over_supervised_passes": step / supervised,
        "weak_no_grad_step_s": step_nograd, "weak_no_grad_over_step": step_nograd / step,
        "step_peak_rss_growth_mb": rss_step / 1024,
    }


def bench_augment(n: int = 2000) -> dict:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    spec = transforms.AugmentSpec(kind="cifar", image_size=32, magnitude=16)
    t0 = time.perf_counter()
    for i in range(n):
        transforms.weak_and_strong(images[i % 64], spec, np.random.default_rng([0, i]))
    return {"weak_strong_images_per_s_one_core": n / (time.perf_counter() - t0), "target": 3500}


def bench_train_wait(workers: int) -> dict:
    """Run a short `mpl train` on synthetic 32x32 data and read the data-wait fraction."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        mpl = [sys.executable, "-m", "mpltools"]
        run = lambda *a: subprocess.run([*mpl, *a], cwd=tmp, env=env, check=True, capture_output=True)  # noqa: E731
        run("data", "import", "synthetic", "--num-samples", "2000", "--image-size", "32", "--out", "all")
        run("data", "split", "all", "--labeled-per-class", "40", "--val-per-class", "10", "--out", "split")
        recipe = Path(tmp) / "r.toml"
        recipe.write_text(f"""
[data]
labeled = "split/labeled"
unlabeled = "split/unlabeled"
batch_size = 8
unlabeled_ratio = 7
workers = {workers}
in_memory = "no"
[augment]
kind = "cifar"
normalisation = "cifar10"
[model]
name = "wrn28_2"
[schedule]
steps = 60
[runtime]
log_every = 20
threads = 1
[checkpoint]
every = 1000
""")
        run("train", str(recipe), "--out", "run")
        records = [json.loads(line) for line in (Path(tmp) / "run/metrics.jsonl").read_text().splitlines()]
    steady = [r for r in records if "data/wait_fraction" in r][1:]  # skip the first window (worker start-up)
    return {"workers": workers, "data_wait_fraction": statistics.mean(r["data/wait_fraction"] for r in steady),
            "images_per_s": statistics.mean(r["throughput/images_per_s"] for r in steady), "target": 0.05}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default="benchmarks/out/step.json")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                           "threads": torch.get_num_threads()}}
    results["wrn28_2"] = bench_model("wrn28_2 32x32", "wrn28_2", {"dropout": 0.2}, (3, 32, 32), 10, 8, 7, args.repeats)
    results["mlp"] = bench_model("twomoon mlp", "mlp", {}, (2,), 2, 6, 50, args.repeats * 10)
    results["augment"] = bench_augment()
    if not args.skip_train:
        results["train_data_wait"] = bench_train_wait(workers=2)
    for key in ("wrn28_2", "mlp"):
        r = results[key]
        print(f"{r['model']:>16}: step {r['step_s'] * 1e3:8.2f} ms | step/passes {r['step_over_passes']:.3f} (target <= 1.05) | "
              f"step/supervised step {r['step_over_supervised_step']:.2f} | weak-no-grad/step {r['weak_no_grad_over_step']:.2f} | "
              f"peak RSS growth {r['step_peak_rss_growth_mb']:.0f} MB")
    print(f"augmentation weak+strong 32x32: {results['augment']['weak_strong_images_per_s_one_core']:,.0f} img/s per core (target >= 3,500)")
    if "train_data_wait" in results:
        w = results["train_data_wait"]
        print(f"mpl train (wrn28_2, synthetic 32x32, {w['workers']} workers): data wait {w['data_wait_fraction']:.1%} "
              f"of wall time (target <= 5%), {w['images_per_s']:,.0f} img/s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
