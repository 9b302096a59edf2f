"""Throughput and memory of `mpl data split` against a copy + sha256 of the same shard bytes.

    python benchmarks/data.py [--sizes 10000 100000] [--repeats 3] [--json benchmarks/out/data.json]

Builds synthetic shard sets of 32x32 RGB PNGs (`mpl data import synthetic`, cached in
benchmarks/out/), then for each size, in interleaved repeats:

- copy+sha256: read every shard file in 1 MB blocks, sha256 them and write them to another folder
  on the same disk, fsync each file (the least any verified copy does: `split` also checks every
  source shard's sha256 and gives its outputs the same durability); one thread;
- copy: the same without the hash;
- split: `mpl data split --preset cifar10-4k` in this process (throughput), also with its sequential
  shard index (`data/fastindex.py` switched off) to show that part, and once as a subprocess whose
  peak resident memory is read with os.wait4.

Prints split / (copy+sha256) throughput ratios (target >= 0.5) and the growth of split's peak RSS from
the smallest to the largest set (target < 50 MB). Best of --repeats runs: the disk and other processes
make single timings noisy; every timed run starts after an (untimed) os.sync().
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from mpltools import __version__, log  # noqa: E402
from mpltools.commands import data_split  # noqa: E402
from mpltools.data.opening import open_shard_set  # noqa: E402

TARGET_RATIO = 0.5
TARGET_RSS_GROWTH_MB = 50.0
OUT = ROOT / "out"


def _mpl(*args: str) -> list[str]:
    return [sys.executable, "-m", "mpltools", "-q", *args]


def shard_set(n: int) -> Path:
    """A cached synthetic set of n 32x32 RGB images (10 classes, 10,000 per shard)."""
    path = OUT / f"synthetic-{n}"
    try:
        if open_shard_set(path).num_samples == n:
            return path
    except Exception:  # noqa: BLE001 - missing or stale cache: rebuild
        pass
    start = time.perf_counter()
    subprocess.run(
        _mpl("data", "import", "synthetic", "--num-samples", str(n), "--image-size", "32", "--out", str(path), "--force"),
        check=True,
        stdin=subprocess.DEVNULL,
    )
    print(f"built {path.name} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return path


def plain_copy(src: Path, dst: Path, sha256: bool = False) -> float:
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    start = time.perf_counter()
    for path in sorted(src.glob("shard-*.tar")):
        digest = hashlib.sha256()
        with open(path, "rb") as a, open(dst / path.name, "wb") as b:
            while block := a.read(1 << 20):
                if sha256:
                    digest.update(block)
                b.write(block)
            b.flush()
            os.fsync(b.fileno())
        digest.hexdigest()
    return time.perf_counter() - start


def split_in_process(src: Path, dst: Path, sequential_index: bool = False) -> float:
    import mpltools.data.fastindex as fastindex

    sizes = data_split.SplitSizes(**vars(data_split.PRESETS["cifar10-4k"]))
    shutil.rmtree(dst, ignore_errors=True)  # not timed, like the copy's
    real = fastindex.index_plain
    if sequential_index:
        fastindex.index_plain = lambda *a: None
    try:
        start = time.perf_counter()
        data_split.run(str(src), dst, sizes, seed=0, preset="cifar10-4k", max_per_shard=10_000, force=True, command="benchmark")
        return time.perf_counter() - start
    finally:
        fastindex.index_plain = real


def split_subprocess(src: Path, dst: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of `mpl data split` as its own process."""
    shutil.rmtree(dst, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        _mpl("data", "split", str(src), "--out", str(dst), "--preset", "cifar10-4k", "--force"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"mpl data split exited {proc.returncode}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=OUT / "data.json")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    log.set_quiet(True)
    results = []
    for n in sorted(args.sizes):
        src = shard_set(n)
        nbytes = sum(p.stat().st_size for p in src.glob("shard-*.tar"))
        copies, hashed, splits, sequential, runs = [], [], [], [], []
        loads = [os.getloadavg()[0]]
        for _ in range(args.repeats):  # interleaved, each from a clean page cache state (os.sync, not timed)
            shutil.rmtree(OUT / "copy", ignore_errors=True)
            shutil.rmtree(OUT / "split", ignore_errors=True)
            os.sync()
            hashed.append(plain_copy(src, OUT / "copy", sha256=True))
            os.sync()
            splits.append(split_in_process(src, OUT / "split"))
            os.sync()
            copies.append(plain_copy(src, OUT / "copy"))
            os.sync()
            sequential.append(split_in_process(src, OUT / "split", sequential_index=True))
            os.sync()
            runs.append(split_subprocess(src, OUT / "split"))
            loads.append(os.getloadavg()[0])
        copy_s, hashed_s, split_s, seq_s = min(copies), min(hashed), min(splits), min(sequential)
        wall_s, rss_mb = min(r[0] for r in runs), max(r[1] for r in runs)
        row = {
            "samples": n,
            "shard_bytes": nbytes,
            "copy_s": round(copy_s, 3),
            "copy_sha256_s": round(hashed_s, 3),
            "copy_sha256_samples_per_s": round(n / hashed_s),
            "split_s": round(split_s, 3),
            "split_samples_per_s": round(n / split_s),
            "ratio": round(hashed_s / split_s, 3),
            "ratio_to_bare_copy": round(copy_s / split_s, 3),
            "split_sequential_index_s": round(seq_s, 3),
            "ratio_sequential_index": round(hashed_s / seq_s, 3),
            "split_process_s": round(wall_s, 3),
            "ratio_process": round(hashed_s / wall_s, 3),
            "split_peak_rss_mb": round(rss_mb, 1),
            "load_average_1min": loads,
        }
        results.append(row)
        print(
            f"{n:>7,} samples ({nbytes / 1e6:,.0f} MB): copy+sha256 {row['copy_sha256_samples_per_s']:>9,}/s   "
            f"split {row['split_samples_per_s']:>9,}/s   ratio {row['ratio']:.2f} (target >= {TARGET_RATIO}; "
            f"{row['ratio_to_bare_copy']:.2f} of a bare copy; {row['ratio_sequential_index']:.2f} with the sequential index)   "
            f"as a process {wall_s:.2f}s, ratio {row['ratio_process']:.2f}, peak RSS {rss_mb:.0f} MB; load {max(loads):.1f}"
        )
    shutil.rmtree(OUT / "copy", ignore_errors=True)
    shutil.rmtree(OUT / "split", ignore_errors=True)
    growth = results[-1]["split_peak_rss_mb"] - results[0]["split_peak_rss_mb"]
    print(
        f"split peak RSS growth {results[0]['samples']:,} -> {results[-1]['samples']:,} samples: {growth:.1f} MB "
        f"(target < {TARGET_RSS_GROWTH_MB:.0f} MB)"
    )
    report = {
        "benchmark": "data",
        "mpltools_version": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "results": results,
        "rss_growth_mb": round(growth, 1),
        "targets": {"ratio": TARGET_RATIO, "rss_growth_mb": TARGET_RSS_GROWTH_MB},
        "met": all(r["ratio"] >= TARGET_RATIO for r in results) and growth < TARGET_RSS_GROWTH_MB,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
