"""MPL step cost as `mpl train` runs it, against the most used port measured in the same run (a
benchmark, not a test): prints paired ratios and writes JSON.

    python benchmarks/step.py [--rounds 4] [--steps 6] [--json benchmarks/out/step.json] [--in-process]

* Step: WRN-28-2 at 32x32, labelled batch 8, mu = 7, one torch thread, the CIFAR-10-4K recipe's
  method settings (UDA, label smoothing 0.15, student EMA 0.995) on a synthetic shard set.
  - `mpl`: `mpl train` itself (its loaders with 2 workers, the recipe's `channels_last = "auto"`),
    in a child process per round; a step's time is a logging window's (4 steps) images divided by
    its throughput, over 4 (so it includes the data wait, the batch transfer, the logging and, on one
    step in four, the step's diagnostics: real runs log every 50 steps by default);
  - `mpl-contiguous`: the same with `runtime.channels_last = false`;
  - `mpl-weak-no-grad`: the same with `method.teacher_weak_no_grad = true`;
  - `port`: the most used PyTorch port's step (benchmarks/kek_port.py) on ready random tensors, in
    a child process, timed per call like perf-anchors §2.1.
  Each round runs the four children one after another in a random order; ratios are taken within a
  round (median step of each child, the first window or 4 steps dropped), so machine load hits both sides.
  Peak RSS is each child's own `ru_maxrss` (loader workers are separate processes, reported apart
  as their summed private memory). The load average is recorded before each round.
* Augmentation: weak+strong pairs at 32x32 per second on one core, and the cost of the per-sample
  randomness: a `numpy.random.default_rng([seed, stream, slot, slots, batch, row])` per image (what the
  streams did before) against one block of uniforms per batch (`data/sample_random.py`), each as a
  share of the pair's time, measured in the same loop.
* `--in-process` adds the old in-process analysis: `mpl_step` against the summed time of its own
  passes, a supervised step and the TwoMoon MLP (no loaders, contiguous tensors).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mpltools.data import transforms  # noqa: E402
from mpltools.methods import STEPS  # noqa: E402
from mpltools.methods.common import Batch, MPLHyper, Networks, measurement_mode  # noqa: E402
from mpltools.methods.optim import build_sgd, norm_parameter_names  # noqa: E402
from mpltools.models import build_model  # noqa: E402


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
    return Networks(
        t,
        s,
        build_sgd(t, hp.teacher_lr, weight_decay=hp.teacher_weight_decay, no_decay_names=t_nd),
        build_sgd(s, hp.student_lr, weight_decay=hp.student_weight_decay, no_decay_names=s_nd),
        None,
        None,
        t_nd,
        s_nd,
    )


def bench_model(label: str, name: str, kwargs: dict, shape: tuple, classes: int, b: int, mu: int, repeats: int) -> dict:
    hp = MPLHyper(total_steps=10_000, teacher_warmup=0, student_warmup=0, student_wait=0, ema_decay=0.0)
    nets = make_nets(name, kwargs, shape, classes, hp)
    batch = Batch(
        torch.randn(b, *shape), torch.randint(0, classes, (b,)), torch.randn(mu * b, *shape), torch.randn(mu * b, *shape)
    )
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
        "model": label,
        "labeled_batch": b,
        "mu": mu,
        "step_s": step,
        "passes_s": passes,
        "step_over_passes": step / passes,
        "supervised_step_s": sup_step,
        "step_over_supervised_step": step / sup_step,
        "supervised_passes_s": supervised,
        "step_over_supervised_passes": step / supervised,
        "weak_no_grad_step_s": step_nograd,
        "weak_no_grad_over_step": step_nograd / step,
        "step_peak_rss_growth_mb": rss_step / 1024,
    }


def bench_augment(n: int = 3000, batch: int = 56) -> dict:
    """Pairs per second, and the per-sample randomness of the old and the new scheme as shares of a pair."""
    from mpltools.data.sample_random import BatchRandom, Uniforms

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    spec = transforms.AugmentSpec(kind="cifar", image_size=32, magnitude=16)
    per = transforms.draws(spec, "unlabeled")
    block_rng = BatchRandom(0, 1, per)
    times = {"pairs": [], "old_rng": [], "new_rng": []}
    for _ in range(5):  # interleaved repeats
        rows = block_rng.block((0,), batch)
        t0 = time.perf_counter()
        for i in range(n):
            transforms.weak_and_strong(images[i % 64], spec, Uniforms(rows[i % batch]))
        times["pairs"].append((time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        for i in range(n):
            np.random.default_rng([0, 1, 0, 2, i // batch, i % batch]).random(per)
        times["old_rng"].append((time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        for k in range(n // batch):
            block = block_rng.block((k, 0, 2), batch)
            for row in block:
                Uniforms(row).random(per)
        times["new_rng"].append((time.perf_counter() - t0) / (n // batch * batch))
    pair, old, new = (statistics.median(times[k]) for k in ("pairs", "old_rng", "new_rng"))
    return {
        "weak_strong_pairs_per_s_one_core": 1 / pair,
        "pair_us": pair * 1e6,
        "old_rng_us": old * 1e6,
        "new_rng_us": new * 1e6,
        "old_rng_share_of_pair": old / pair,
        "new_rng_share_of_pair": new / pair,
        "uniforms_per_pair": per,
        "target_share": 0.05,
    }


RECIPE = """
[data]
labeled = "split/labeled"
unlabeled = "split/unlabeled"
batch_size = 8
unlabeled_ratio = 7
workers = 2
[augment]
kind = "cifar"
normalisation = "cifar10"
[model]
name = "wrn28_2"
[method]
label_smoothing = 0.15
uda_temperature = 0.7
uda_threshold = 0.6
uda_weight = 8.0
[student]
ema_decay = 0.995
[schedule]
steps = {steps}
[runtime]
log_every = {log_every}
threads = 1
[checkpoint]
every = 100000
"""

VARIANTS = {
    "mpl": [],
    "mpl-contiguous": ["runtime.channels_last=false"],
    "mpl-weak-no-grad": ["method.teacher_weak_no_grad=true"],
    "port": None,
}
LOG = 4  # `mpl train` logs (and runs the step's diagnostics) every LOG steps; a step's time is a window's / LOG
SKIP = 1  # first windows (or port steps, x LOG) of each child left out: allocator and oneDNN warm-up, worker start


def _private_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    fields = dict(line.split(":", 1) for line in text.splitlines()[1:])
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty")) / 1024


def child_mpl(work: Path, out: str, sets: list[str]) -> dict:
    """`mpl train` in this process (exactly the CLI), then this process's peak RSS."""
    import threading

    from mpltools.cli import main as mpl_main

    workers_mb: list[float] = []

    def watch() -> None:  # the loader workers' private memory, sampled while they run
        me = os.getpid()
        while not done.is_set():
            try:
                kids = [int(k) for k in Path(f"/proc/{me}/task/{me}/children").read_text().split()]
            except OSError:
                kids = []
            if kids:
                workers_mb.append(sum(_private_mb(k) for k in kids))
            done.wait(1.0)

    done = threading.Event()
    threading.Thread(target=watch, daemon=True).start()
    os.chdir(work)
    args = ["-q", "train", "r.toml", "--out", out, "--force"]
    for item in sets:
        args += ["--set", item]
    try:
        mpl_main(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    done.set()
    records = [json.loads(line) for line in (work / out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "throughput/images_per_s" in r]
    images = 8 * (1 + 2 * 7)  # per step; throughput is over a window of LOG steps
    return {
        "step_s": [images / r["throughput/images_per_s"] for r in steps],
        "data_wait": [r["data/wait_fraction"] for r in steps],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_private_mb": max(workers_mb) if workers_mb else 0.0,
    }


def child_port(steps: int) -> dict:
    from kek_port import PortStep

    torch.manual_seed(0)
    step = PortStep()
    g = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(8, 3, 32, 32, generator=g),
            torch.randint(0, 10, (8,), generator=g),
            torch.randn(56, 3, 32, 32, generator=g),
            torch.randn(56, 3, 32, 32, generator=g),
        )
        for _ in range(4)
    ]
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(i, *batches[i % 4])
        times.append(time.perf_counter() - t0)
    return {"step_s": times, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def prepare(work: Path, steps: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
    mpl = [sys.executable, "-m", "mpltools", "-q"]
    subprocess.run(
        [*mpl, "data", "import", "synthetic", "--num-samples", "2000", "--image-size", "32", "--out", "all"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*mpl, "data", "split", "all", "--labeled-per-class", "40", "--val-per-class", "0", "--out", "split"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
    )
    (work / "r.toml").write_text(RECIPE.format(steps=steps, log_every=LOG))


def run_child(variant: str, work: Path, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "true"}
    cmd = [sys.executable, __file__, "--child", variant, "--work", str(work), "--steps", str(steps)]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def bench_rounds(rounds: int, steps: int, seed: int = 0) -> dict:
    order_rng = random.Random(seed)
    per_round = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work, LOG * (steps + SKIP))
        for r in range(rounds):
            load = os.getloadavg()
            names = list(VARIANTS)
            order_rng.shuffle(names)
            got = {}
            for name in names:
                got[name] = run_child(name, work, LOG * (steps + SKIP))
                skip = SKIP * (LOG if name == "port" else 1)  # the port times every step, `mpl train` every window
                got[name]["median_step_s"] = statistics.median(got[name]["step_s"][skip:])
            per_round.append({"round": r, "order": names, "load_average": load, **got})
            print(
                f"round {r}: load {load[0]:.2f} | "
                + " | ".join(f"{n} {got[n]['median_step_s']:.2f} s, {got[n]['peak_rss_mb']:.0f} MB" for n in VARIANTS),
                file=sys.stderr,
            )
    ratio = lambda a, b: [x[a]["median_step_s"] / x[b]["median_step_s"] for x in per_round]  # noqa: E731
    summary = {
        "mpl_over_port": _stats(ratio("mpl", "port")),
        "mpl_contiguous_over_port": _stats(ratio("mpl-contiguous", "port")),
        "mpl_weak_no_grad_over_port": _stats(ratio("mpl-weak-no-grad", "port")),
        "channels_last_over_contiguous": _stats(ratio("mpl", "mpl-contiguous")),
        "weak_no_grad_over_default": _stats(ratio("mpl-weak-no-grad", "mpl")),
        "step_s": {n: _stats([x[n]["median_step_s"] for x in per_round]) for n in VARIANTS},
        "peak_rss_mb": {n: _stats([x[n]["peak_rss_mb"] for x in per_round]) for n in VARIANTS},
        "mpl_workers_private_mb": _stats([x["mpl"]["workers_private_mb"] for x in per_round]),
        "mpl_data_wait": _stats([statistics.mean(x["mpl"]["data_wait"][SKIP:]) for x in per_round]),
        "load_average_1min": _stats([x["load_average"][0] for x in per_round]),
    }
    return {"rounds": per_round, "summary": summary, "windows_per_child": steps, "log_every": LOG, "skipped_windows": SKIP}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help=f"measured windows of {LOG} steps per child (after {SKIP} left out)")
    parser.add_argument("--json", default=str(ROOT / "out/step.json"))
    parser.add_argument("--in-process", action="store_true", help="also the old in-process pass analysis")
    parser.add_argument("--repeats", type=int, default=5, help="--in-process: repeats per timing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child == "port":
        print(json.dumps(child_port(args.steps)))
        return
    if args.child:
        print(json.dumps(child_mpl(Path(args.work), f"run-{args.child}", VARIANTS[args.child])))
        return
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "processor": platform.processor() or platform.machine(),
            "threads": 1,
        }
    }
    results["augment"] = bench_augment()
    a = results["augment"]
    print(
        f"augmentation: {a['weak_strong_pairs_per_s_one_core']:,.0f} weak+strong pairs/s per core ({a['pair_us']:.0f} us a pair); "
        f"per-sample randomness {a['old_rng_us']:.1f} us ({a['old_rng_share_of_pair']:.1%} of a pair) before, "
        f"{a['new_rng_us']:.2f} us ({a['new_rng_share_of_pair']:.2%}) now (target <= 5%)"
    )
    results["train"] = bench_rounds(args.rounds, args.steps)
    s = results["train"]["summary"]
    fmt = lambda d: f"{d['median']:.3f} ({d['min']:.3f}-{d['max']:.3f}, n={d['n']})"  # noqa: E731
    print(f"mpl train step / port step:                {fmt(s['mpl_over_port'])}")
    print(f"  with runtime.channels_last = false:      {fmt(s['mpl_contiguous_over_port'])}")
    print(f"  with method.teacher_weak_no_grad = true: {fmt(s['mpl_weak_no_grad_over_port'])}")
    print(
        f"channels-last / contiguous: {fmt(s['channels_last_over_contiguous'])}; weak-no-grad / default: {fmt(s['weak_no_grad_over_default'])}"
    )
    for n in VARIANTS:
        print(
            f"{n:>17}: step {fmt(s['step_s'][n])} s, peak RSS {s['peak_rss_mb'][n]['median']:.0f} MB "
            f"({s['peak_rss_mb'][n]['min']:.0f}-{s['peak_rss_mb'][n]['max']:.0f})"
        )
    print(
        f"mpl train data wait {s['mpl_data_wait']['median']:.2%}; its 2 loader workers' private memory "
        f"{s['mpl_workers_private_mb']['median']:.0f} MB; load average {fmt(s['load_average_1min'])}"
    )
    if args.in_process:
        results["wrn28_2"] = bench_model("wrn28_2 32x32", "wrn28_2", {"dropout": 0.2}, (3, 32, 32), 10, 8, 7, args.repeats)
        results["mlp"] = bench_model("twomoon mlp", "mlp", {}, (2,), 2, 6, 50, args.repeats * 10)
        for key in ("wrn28_2", "mlp"):
            r = results[key]
            print(
                f"{r['model']:>16}: step {r['step_s'] * 1e3:8.2f} ms | step/passes {r['step_over_passes']:.3f} (target <= 1.05) | "
                f"step/supervised step {r['step_over_supervised_step']:.2f} | weak-no-grad/step {r['weak_no_grad_over_step']:.2f}"
            )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
