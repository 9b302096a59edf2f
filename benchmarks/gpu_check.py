"""GPU check of the MPL step (a benchmark, not a test): precision agreement, speed, memory, data wait.

One command, about 5-8 minutes on one modern GPU; prints a table and writes JSON:

    python benchmarks/gpu_check.py [--steps 300] [--out benchmarks/out/gpu_check.json]

1. Precision agreement. WRN-28-2 (dropout 0.2) teacher and student on synthetic 32x32 batches (labelled batch 64,
   mu = 7, the CIFAR-10-4K recipe's hyper-parameters without the wait) follow one fp32 trajectory for
   `--steps` steps. At every step the same state, batch and RNG are probed in fp32, bf16 and fp16
   (each probe is one `mpl_step` on a copy, with the teacher's supervised and UDA weights and weight
   decay at 0, so the teacher's `.grad` is its MPL gradient alone). Reported per precision: sign
   agreement of h with fp32, median relative error of h, median and minimum cosine of the teacher's
   MPL gradient with fp32, and (fp16) the steps skipped for overflow. Teacher-forcing keeps the
   comparison per step: free-running trajectories drift apart whatever the precision.
2. Speed and memory of the step as `mpl train` runs it, per precision, with and without channels-last,
   and with torch.compile for bf16: median step time, images/s (labelled + both unlabelled views) and
   peak GPU memory.
3. Data wait: a real `mpl train` (subprocess) on a synthetic PNG shard set with 8 loader workers;
   the logged `data/wait_fraction`.

Without a GPU it runs a seconds-long CPU dry mode (tiny batch, 3 steps, no compile) that exercises
the same code; `tests/unit/test_gpu_check.py` runs that mode.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from mpltools.losses import flat_cosine
from mpltools.methods import Batch, MPLHyper, Networks, build_sgd, mpl_step, norm_parameter_names
from mpltools.methods.precision import LossScaler
from mpltools.models import build_model
from mpltools.runtime import Runtime

PRECISIONS = ("no", "bf16", "fp16")


def _hyper(steps: int) -> MPLHyper:
    return MPLHyper(
        total_steps=max(steps, 10),
        teacher_lr=0.05,
        student_lr=0.05,
        teacher_warmup=0,
        student_warmup=0,
        student_wait=0,
        label_smoothing=0.15,
        uda_weight=8.0,
        uda_ramp_steps=0,
        ema_decay=0.0,
    )


MODEL = {"name": "wrn28_2", "kwargs": {"dropout": 0.2}}  # the dry mode swaps in a WRN-10-1


def _nets(device: torch.device, hp: MPLHyper, channels_last: bool) -> Networks:
    torch.manual_seed(0)
    t = build_model(MODEL["name"], 10, (3, 32, 32), **MODEL["kwargs"]).to(device)
    s = build_model(MODEL["name"], 10, (3, 32, 32), **MODEL["kwargs"]).to(device)
    if channels_last:
        t, s = t.to(memory_format=torch.channels_last), s.to(memory_format=torch.channels_last)
    tn, sn = norm_parameter_names(t), norm_parameter_names(s)
    return Networks(
        t,
        s,
        build_sgd(t, hp.teacher_lr, weight_decay=hp.teacher_weight_decay, no_decay_names=tn),
        build_sgd(s, hp.student_lr, weight_decay=hp.student_weight_decay, no_decay_names=sn),
        None,
        None,
        tn,
        sn,
    )


def _batch(step: int, b: int, mu: int, device: torch.device, channels_last: bool) -> Batch:
    g = torch.Generator(device=device).manual_seed(1000 + step)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = lambda n: torch.randn(n, 3, 32, 32, generator=g, device=device).contiguous(memory_format=fmt)  # noqa: E731
    return Batch(x(b), torch.randint(0, 10, (b,), generator=g, device=device), x(mu * b), x(mu * b))


def _rng(device: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def agreement(device: torch.device, steps: int, b: int, mu: int) -> dict:
    hp = _hyper(steps)
    probe_hp = replace(hp, teacher_supervised_weight=0.0, uda_weight=0.0, teacher_weight_decay=0.0, baseline=False)
    nets = _nets(device, hp, channels_last=False)
    gen = torch.Generator(device=device).manual_seed(7)
    fp16_scaler_state = {"teacher": LossScaler().state_dict(), "student": LossScaler().state_dict()}
    rows = {p: [] for p in PRECISIONS}
    for step in range(steps):
        batch = _batch(step, b, mu, device, channels_last=False)
        rng, gen_state = _rng(device), gen.get_state()
        for precision in PRECISIONS:
            probe = copy.deepcopy(nets)
            if precision == "fp16":
                probe.teacher_scaler, probe.student_scaler = LossScaler(), LossScaler()
                probe.teacher_scaler.load_state_dict(fp16_scaler_state["teacher"])
                probe.student_scaler.load_state_dict(fp16_scaler_state["student"])
            _set_rng(rng, device)
            gen.set_state(gen_state)
            with Runtime(None, device, 0, 1, True, precision, None).autocast():
                out = mpl_step(probe, batch, step, probe_hp, generator=gen)
            grad = torch.cat([p.grad.reshape(-1) for p in probe.teacher.parameters()]).float()
            skipped = float(out["student/skipped"]) or float(out.get("teacher/skipped", 0.0))
            rows[precision].append((float(out["feedback/h"]), grad, skipped))
            if precision == "fp16":
                fp16_scaler_state = {"teacher": probe.teacher_scaler.state_dict(), "student": probe.student_scaler.state_dict()}
            del probe
        _set_rng(rng, device)
        gen.set_state(gen_state)
        mpl_step(nets, batch, step, hp, generator=gen)  # the fp32 trajectory itself
    ref = rows["no"]
    report = {}
    for precision in ("bf16", "fp16"):
        pairs = [(r, x) for r, x in zip(ref, rows[precision]) if not x[2]]
        cos = [float(flat_cosine(x[1], r[1])) for r, x in pairs]
        rel = [abs(x[0] - r[0]) / max(abs(r[0]), 1e-12) for r, x in pairs]
        report[precision] = {
            "steps_compared": len(pairs),
            "steps_skipped_overflow": len(ref) - len(pairs),  # student or teacher
            "h_sign_agreement": sum((x[0] > 0) == (r[0] > 0) for r, x in pairs) / max(len(pairs), 1),
            "h_median_relative_error": statistics.median(rel) if rel else None,
            "teacher_mpl_grad_cosine_median": statistics.median(cos) if cos else None,
            "teacher_mpl_grad_cosine_min": min(cos) if cos else None,
        }
    report["fp32_median_abs_h"] = statistics.median(abs(r[0]) for r in ref)
    return report


def speed(device: torch.device, precision: str, channels_last: bool, compiled: bool, b: int, mu: int, steps: int) -> dict:
    hp = _hyper(1000)
    nets = _nets(device, hp, channels_last)
    if precision == "fp16":
        nets.teacher_scaler, nets.student_scaler = LossScaler(), LossScaler()
    if compiled:
        nets.teacher.compile()
        nets.student.compile()
    gen = torch.Generator(device=device).manual_seed(7)
    batches = [_batch(i, b, mu, device, channels_last) for i in range(4)]
    region = Runtime(None, device, 0, 1, True, precision, None).autocast
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    warmup = 1 if device.type == "cpu" else 10
    for i in range(warmup):
        with region():
            mpl_step(nets, batches[i % 4], i, hp, generator=gen)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        with region():
            mpl_step(nets, batches[i % 4], warmup + i, hp, generator=gen)
        sync()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    return {
        "precision": precision,
        "channels_last": channels_last,
        "compile": compiled,
        "step_ms": 1000 * step_s,
        "images_per_s": b * (1 + 2 * mu) / step_s,
        "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }


def data_wait(dry: bool) -> dict:
    """A real `mpl train` through the CLI with loader workers on a synthetic PNG shard set."""
    samples, steps, workers, batch = (100, 4, 1, 4) if dry else (20_000, 300, 8, 128)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mpl = [sys.executable, "-m", "mpltools", "-q"]
        subprocess.run(
            [*mpl, "data", "import", "synthetic", "--out", str(tmp / "all"), "--num-samples", str(samples), "--image-size", "32"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [*mpl, "data", "split", str(tmp / "all"), "--labeled-fraction", "0.2", "--val", "0", "--out", str(tmp / "split")],
            check=True,
            capture_output=True,
        )
        recipe = Path(__file__).resolve().parents[1] / "recipes/cifar10_4k.toml"
        sets = {
            "model.name": MODEL["name"],
            "model.kwargs": "{ " + ", ".join(f"{k} = {v}" for k, v in MODEL["kwargs"].items()) + " }",
            "data.labeled": tmp / "split/labeled",
            "data.unlabeled": tmp / "split/unlabeled",
            "data.val": '""',
            "data.workers": workers,
            "data.batch_size": batch,
            "data.in_memory": "no",
            "schedule.steps": steps,
            "student.wait_steps": 0,
            "runtime.log_every": max(steps // 3, 1),
            "eval.every": 0,
        }
        args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
        t0 = time.perf_counter()
        subprocess.run([*mpl, "train", str(recipe), "--out", str(tmp / "run"), *args], check=True, capture_output=True)
        wall = time.perf_counter() - t0
        records = [json.loads(line) for line in (tmp / "run/metrics.jsonl").read_text().splitlines() if line.strip()]
    logged = [r for r in records if "data/wait_fraction" in r]
    steady = logged[1:] or logged  # the first window includes the workers' start
    return {
        "steps": steps,
        "workers": workers,
        "labeled_batch": batch,
        "wall_s": wall,
        "wait_fraction_steady": statistics.mean(r["data/wait_fraction"] for r in steady),
        "wait_fraction_first_window": logged[0]["data/wait_fraction"],
        "images_per_s": steady[-1]["throughput/images_per_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps of the precision-agreement trajectory (GPU)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/gpu_check.json"))
    parser.add_argument("--dry", action="store_true", help="the CPU dry mode even if a GPU is present")
    args = parser.parse_args(argv)
    dry = args.dry or not torch.cuda.is_available()
    device = torch.device("cpu" if dry else "cuda")
    if dry:
        torch.set_num_threads(1)
        MODEL.update(name="wide_resnet", kwargs={"depth": 10, "widen": 1, "dropout": 0.2})
    else:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True  # probes of one state must differ by precision only
    b, mu, steps = (2, 1, 3) if dry else (64, 7, args.steps)
    start = time.perf_counter()
    report = {
        "device": torch.cuda.get_device_name(device)
        if not dry
        else f"CPU dry mode ({platform.processor() or platform.machine()})",
        "dry": dry,
        "torch": torch.__version__,
        "model": dict(MODEL),
        "labeled_batch": b,
        "mu": mu,
    }
    report["agreement"] = agreement(device, steps, b, mu)
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = not dry
    configs = [(p, cl, False) for p in PRECISIONS for cl in (False, True)] + (
        [] if dry else [("bf16", False, True), ("bf16", True, True)]
    )
    report["speed"] = [speed(device, p, cl, comp, b, mu, 2 if dry else 30) for p, cl, comp in configs]
    report["data_wait"] = data_wait(dry)
    report["wall_s"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(render(report))
    print(f"wrote {args.out}")
    return 0


def render(r: dict) -> str:
    a = r["agreement"]
    lines = [
        f"GPU check on {r['device']} (torch {r['torch']}), {r['model']['name']} {r['model']['kwargs']}, "
        f"labelled batch {r['labeled_batch']}, mu {r['mu']}; "
        f"{r['wall_s']:.0f} s",
        "",
        f"precision agreement with fp32 (teacher-forced; fp32 median |h| {a['fp32_median_abs_h']:.2e}):",
        "| precision | steps | skipped (overflow) | h sign agreement | h median rel. error | MPL grad cosine median / min |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    for p in ("bf16", "fp16"):
        x = a[p]
        lines.append(
            f"| {p} | {x['steps_compared']} | {x['steps_skipped_overflow']} | {x['h_sign_agreement']:.3f} | "
            f"{fmt(x['h_median_relative_error'], '.2e')} | {fmt(x['teacher_mpl_grad_cosine_median'], '.5f')} / "
            f"{fmt(x['teacher_mpl_grad_cosine_min'], '.5f')} |"
        )
    lines += ["", "| precision | channels-last | compile | step ms | images/s | peak GPU MiB |", "|---|---|---|---:|---:|---:|"]
    for s in r["speed"]:
        lines.append(
            f"| {s['precision']} | {s['channels_last']} | {s['compile']} | {s['step_ms']:.1f} | {s['images_per_s']:.0f} | "
            f"{fmt(s['peak_gpu_mib'], '.0f')} |"
        )
    d = r["data_wait"]
    lines += [
        "",
        f"mpl train, {d['workers']} workers, labelled batch {d['labeled_batch']}, {d['steps']} steps: data wait "
        f"{d['wait_fraction_steady']:.1%} after the first window ({d['wait_fraction_first_window']:.1%} in it), "
        f"{d['images_per_s']:.0f} images/s, wall {d['wall_s']:.0f} s",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
