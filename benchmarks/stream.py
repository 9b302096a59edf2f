"""Samples/s of the training loader on a shard set streamed over HTTP against the same shards on local disk.

    python benchmarks/stream.py [--samples 40000] [--image-size 64] [--workers 2] [--repeats 2] [--json FILE]

Builds a synthetic set of RGB PNGs (`mpl data import synthetic`, 1,000 samples a shard, cached in
benchmarks/out/), serves it with `python -m http.server` on 127.0.0.1 (another process: the server is
not the bottleneck), and reads one epoch of unlabelled batches (weak + strong view, CIFAR augmentation,
the training path: `loaders.make_stream` with DataLoader workers) once from the folder and once from
`http://127.0.0.1:PORT/set/`, in interleaved repeats. Prints samples/s of both, their ratio (target
>= 0.9) over the whole epoch and after the first batch (the wait for the first shards is the time to
first step, which the tests measure; on a short epoch of large shards it weighs on the whole-epoch ratio), MB/s fetched, the server's share of the machine's CPU time meanwhile (on a small machine the
server competes with the decoding workers), and the peak size of the private temporary folder against one shard.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from mpltools import __version__, log  # noqa: E402
from mpltools.data import remote, transforms  # noqa: E402
from mpltools.data.loaders import UNLABELED, StreamConfig, make_stream  # noqa: E402
from mpltools.data.opening import open_shard_set  # noqa: E402

TARGET_RATIO = 0.9
OUT = ROOT / "out"
BATCH = 128


def shard_set(n: int, size: int) -> Path:
    folder = OUT / f"stream-{n}-{size}px"
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
                str(n),
                "--image-size",
                str(size),
                "--max-per-shard",
                "1000",
                "--out",
                str(folder),
                "--force",
            ],
            check=True,
        )
    return folder


def serve(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder.parent)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}/{folder.name}/"


def epoch(location: str, workers: int, size: int) -> tuple[float, float, int]:
    """One epoch of unlabelled batches from `location`: (seconds to the first batch, seconds for the rest, samples)."""
    shards = open_shard_set(location)
    cfg = StreamConfig(
        views="unlabeled", global_batch=BATCH, seed=0, stream_id=UNLABELED, workers=workers, shuffle_buffer=500, prefetch=2
    )
    aug = transforms.AugmentSpec(kind="cifar", image_size=size)
    batches = shards.num_samples // BATCH
    stream = make_stream(shards, cfg, aug, in_memory=False)
    start = time.perf_counter()
    next(stream)
    first = time.perf_counter() - start
    for _ in range(batches - 1):
        next(stream)
    rest = time.perf_counter() - start - first
    del stream
    return first, rest, batches * BATCH


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_of(folder_of, stop: threading.Event, peak: list) -> None:
    while not stop.is_set():
        folder = folder_of()
        size = 0
        if folder is not None and folder.exists():
            for path in folder.iterdir():
                try:
                    size += path.stat().st_size
                except FileNotFoundError:
                    pass
        peak[0] = max(peak[0], size)
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    log.set_quiet(True)
    folder = shard_set(args.samples, args.image_size)
    total = sum(p.stat().st_size for p in folder.glob("*.tar"))
    shard = max(p.stat().st_size for p in folder.glob("*.tar"))
    proc, url = serve(folder)
    results: dict = {"local": [], "http": []}
    peak, stop = [0], threading.Event()
    watcher = threading.Thread(target=peak_of, args=(lambda: remote._state.get("folder"), stop, peak), daemon=True)
    watcher.start()
    try:
        for _ in range(args.repeats):
            for name, location in (("local", str(folder)), ("http", url)):
                before, server_before = remote.counters()[1], cpu_seconds(proc.pid)
                first, rest, n = epoch(location, args.workers, args.image_size)
                seconds = first + rest
                # The server's share of the machine's CPU time meanwhile: what it takes from the decoding workers.
                share = (cpu_seconds(proc.pid) - server_before) / (seconds * (os.cpu_count() or 1))
                run = {
                    "samples_per_s": n / seconds,
                    "steady_samples_per_s": (n - BATCH) / rest,
                    "first_batch_s": first,
                    "MB_per_s": (remote.counters()[1] - before) / 1e6 / seconds,
                    "server_cpu_share": share,
                }
                results[name].append(run)
                print(
                    f"{name:5} {run['samples_per_s']:6.0f} samples/s ({run['steady_samples_per_s']:4.0f} after the first batch, "
                    f"which took {first:4.1f} s)  {run['MB_per_s']:5.1f} MB/s fetched  server {share:5.1%} of the CPUs",
                    flush=True,
                )
    finally:
        stop.set()
        proc.terminate()
        proc.wait(5)
    best = {k: max(r["samples_per_s"] for r in v) for k, v in results.items()}
    steady = {k: max(r["steady_samples_per_s"] for r in v) for k, v in results.items()}
    pairs = [h["samples_per_s"] / loc["samples_per_s"] for loc, h in zip(results["local"], results["http"])]
    report = {
        "samples": args.samples,
        "image_size": args.image_size,
        "workers": args.workers,
        "set_MB": total / 1e6,
        "shard_MB": shard / 1e6,
        "local_samples_per_s": best["local"],
        "http_samples_per_s": best["http"],
        "ratio": best["http"] / best["local"],
        "pair_ratios": pairs,
        "steady_ratio": steady["http"] / steady["local"],
        "first_batch_s": {k: min(r["first_batch_s"] for r in v) for k, v in results.items()},
        "target_ratio": TARGET_RATIO,
        "peak_tmp_MB": peak[0] / 1e6,
        "peak_tmp_shards": peak[0] / shard,
        "runs": results,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "mpltools": __version__,
        "tmpdir": tempfile.gettempdir(),
    }
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
