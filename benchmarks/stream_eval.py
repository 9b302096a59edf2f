"""Seconds to evaluate a remote shard set through a throttled server, with and without downloading ahead.

    python benchmarks/stream_eval.py [--shards 12] [--per-shard 400] [--rate 4e6] [--repeats 2] [--json FILE]

Builds a synthetic set of 32x32 RGB PNGs (`mpl data import synthetic`, cached in benchmarks/out/), serves it
from tests/shard_server.py throttled to `--rate` bytes/s, and reads it the ways the eval-style commands do:
`eval_batches` (`mpl eval --data`, validation, `mpl predict`) and `eval_chunks` (`data filter-unlabeled`,
`reduced predict`), each batch through a small convolutional network. "ahead" is the shipped reader (the
next shard downloads while one is read); "one at a time" replaces `fetching.ahead` with a plain loop, which
is what the readers did before. Interleaved repeats, best of each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

import torch  # noqa: E402

from mpltools import log  # noqa: E402
from mpltools.data import fetching, transforms  # noqa: E402
from mpltools.data.chunks import eval_chunks  # noqa: E402
from mpltools.data.loaders import eval_batches  # noqa: E402
from mpltools.data.opening import open_shard_set  # noqa: E402
from tests.shard_server import ShardServer  # noqa: E402

OUT = ROOT / "out"
SHIPPED = fetching.ahead


def shard_set(shards: int, per_shard: int) -> Path:
    folder = OUT / f"stream-eval-{shards}x{per_shard}"
    if not (folder / "manifest.json").exists():
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
                str(shards * per_shard),
                "--image-size",
                "32",
                "--max-per-shard",
                str(per_shard),
                "--out",
                str(folder),
                "--force",
            ],
            check=True,
        )
    return folder


def one_at_a_time(refs, order, depth: int = 1):
    yield from (int(i) for i in order)


def run(reader: str, location: str, model: torch.nn.Module) -> float:
    shards = open_shard_set(location)
    aug = transforms.AugmentSpec(kind="cifar", image_size=32)
    start = time.perf_counter()
    with torch.no_grad():
        if reader == "eval_batches":
            for _, x, _ in eval_batches(shards, aug, 100):
                model(x.permute(0, 3, 1, 2).float())
        else:
            for chunk in eval_chunks(shards, aug, 100):
                model(chunk.x.permute(0, 3, 1, 2).float())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=12)
    parser.add_argument("--per-shard", type=int, default=400)
    parser.add_argument("--rate", type=float, default=4e6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    log.set_quiet(True)
    torch.set_num_threads(1)
    folder = shard_set(args.shards, args.per_shard)
    shard_mb = max(p.stat().st_size for p in folder.glob("*.tar")) / 1e6
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 10),
    ).eval()
    results: dict = {}
    with ShardServer(folder.parent, rate=args.rate) as server:
        location = f"{server.url}/{folder.name}/"
        for _ in range(args.repeats):
            for reader in ("eval_batches", "eval_chunks"):
                for mode, ahead in (("one at a time", one_at_a_time), ("ahead", SHIPPED)):
                    fetching.ahead = ahead
                    seconds = run(reader, location, model)
                    results.setdefault(f"{reader}, {mode}", []).append(seconds)
                    print(f"{reader:12} {mode:14} {seconds:6.2f} s", flush=True)
    fetching.ahead = SHIPPED
    download = args.shards * shard_mb * 1e6 / args.rate
    report = {
        "shards": args.shards,
        "per_shard": args.per_shard,
        "shard_MB": shard_mb,
        "rate_MB_per_s": args.rate / 1e6,
        "download_alone_s": download,
        "best_s": {k: min(v) for k, v in results.items()},
        "runs": results,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
