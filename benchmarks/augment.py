"""Single-core throughput of the augmentation views (mpltools.data.transforms).

A plain loop in one process, one torch/BLAS thread, over a pool of random images:

    python benchmarks/augment.py [--seconds 1.0] [--json out.json]

Prints images/s for weak, strong, weak+strong and eval at 32x32 RGB (CIFAR pipeline),
8x8 grayscale (CIFAR pipeline, no flips, like digits) and 224x224 ImageNet-style (random-resized
crop from 375x500 RGB inputs, M=17).  Target: weak+strong at 32x32 RGB >= 3,500 images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mpltools.data.transforms import AugmentSpec, eval_view, strong, weak, weak_and_strong  # noqa: E402

TARGET_WEAK_STRONG_32 = 3500.0


def _smooth_images(rng: np.random.Generator, n: int, h: int, w: int, c: int) -> list[np.ndarray]:
    """Natural-ish images (smooth gradients + noise) so histogram ops do real work."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(n):
        a, b, ph = rng.uniform(0.02, 0.3, size=3)
        base = 127 + 100 * np.sin(a * yy + b * xx + ph * 6.28)[:, :, None]
        img = base + rng.normal(0, 20, size=(h, w, c))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    if c == 1:
        out = [im[:, :, 0] for im in out]  # grayscale arrives as HxW
    return out


def _rate(fn, images, seconds: float, repeats: int) -> tuple[float, float]:
    """(median, best) images/s over `repeats` windows of seconds/repeats each."""
    n_img = len(images)
    for i in range(min(20, n_img)):  # warm-up (lazy imports, LUT caches)
        fn(images[i])
    rates, i = [], 0
    for _ in range(repeats):
        done = 0
        start = time.perf_counter()
        deadline = start + seconds / repeats
        while True:
            for _ in range(16):
                fn(images[i])
                i = (i + 1) % n_img
            done += 16
            now = time.perf_counter()
            if now >= deadline:
                break
        rates.append(done / (now - start))
    return float(np.median(rates)), float(max(rates))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per view and case")
    parser.add_argument("--repeats", type=int, default=5, help="windows per measurement (median and best reported)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass

    data_rng = np.random.default_rng(args.seed)
    cases = {
        "cifar_32x32_rgb": (AugmentSpec(kind="cifar", image_size=32, magnitude=16), _smooth_images(data_rng, 256, 32, 32, 3)),
        "cifar_8x8_gray": (
            AugmentSpec(kind="cifar", image_size=8, magnitude=16, flip=False),
            _smooth_images(data_rng, 256, 8, 8, 1),
        ),
        "imagenet_224_rgb": (
            AugmentSpec(kind="imagenet", image_size=224, magnitude=17),
            _smooth_images(data_rng, 16, 375, 500, 3),
        ),
    }
    views = ("weak", "strong", "weak+strong", "eval")
    results: dict[str, dict[str, float]] = {}
    best: dict[str, dict[str, float]] = {}
    print(f"{'case':<20}" + "".join(f"{v:>13}" for v in views) + "   (images/s, 1 core, median [best])")
    for name, (spec, images) in cases.items():
        rng = np.random.default_rng(args.seed + 1)
        fns = {
            "weak": lambda x: weak(x, spec, rng),
            "strong": lambda x: strong(x, spec, rng),
            "weak+strong": lambda x: weak_and_strong(x, spec, rng),
            "eval": lambda x: eval_view(x, spec),
        }
        measured = {v: _rate(fns[v], images, args.seconds, args.repeats) for v in views}
        results[name] = {v: m for v, (m, _) in measured.items()}
        best[name] = {v: b for v, (_, b) in measured.items()}
        print(f"{name:<20}" + "".join(f"{results[name][v]:>13.0f}" for v in views))
        print(f"{'':<20}" + "".join(f"{'[' + format(best[name][v], '.0f') + ']':>13}" for v in views))

    got = results["cifar_32x32_rgb"]["weak+strong"]
    ok = got >= TARGET_WEAK_STRONG_32
    print(f"target weak+strong 32x32 RGB >= {TARGET_WEAK_STRONG_32:.0f}/s: {'PASS' if ok else 'FAIL'} ({got:.0f}/s)")
    if args.json:
        payload = {
            "benchmark": "augment",
            "unit": "images/s",
            "threads": 1,
            "seconds_per_view": args.seconds,
            "repeats": args.repeats,
            "statistic": "median over repeats; results_best holds the best window",
            "python": platform.python_version(),
            "machine": platform.machine(),
            "results": results,
            "results_best": best,
            "target": {"case": "cifar_32x32_rgb", "view": "weak+strong", "min": TARGET_WEAK_STRONG_32, "pass": ok},
        }
        with open(args.json, "w") as fh:
            json.dump(payload, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
