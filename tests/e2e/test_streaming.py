"""Remote shard sets are streamed shard by shard: bounded disk, checksums, retries, resume, two processes.

The shards are served by tests/shard_server.py (127.0.0.1, a thread of this process), throttled or
fault-injecting, and its request log says what each command fetched. Tiny TwoMoon sets in shards of 20
samples: `u10` (10 unlabelled shards) and `u200` (200), with a local labelled and val set.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.helpers import REPO, env
from tests.shard_server import ShardServer

TWOMOON = str(REPO / "recipes/tiny/twomoon.toml")
TEN = "shard-{000000..000009}.tar"
LABELLED = "shard-{000000..000011}.tar"  # s10/all: 230 labelled samples
HELD = 2  # shards fetched again on a resume because the shuffle buffer (10 samples) held some of their samples (measured: 1)


def _cli(*args) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from mpltools.cli import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


def _ok(*args) -> str:
    code, out, err = _cli(*args)
    assert code == 0, err[-3000:]
    return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream")
    for name, n in (("s10", 230), ("s200", 4030)):  # 30 labelled + val samples, then 10 or 200 unlabelled shards of 20
        _ok(
            "-q",
            "data",
            "import",
            "twomoon",
            "--num-samples",
            n,
            "--scale",
            "20",
            "--max-per-shard",
            "20",
            "--out",
            root / f"{name}/all",
        )
        _ok(
            "-q",
            "data",
            "split",
            root / f"{name}/all",
            "--labeled-per-class",
            "5",
            "--val-per-class",
            "10",
            "--max-per-shard",
            "20",
            "--out",
            root / f"{name}/split",
        )
    for name in ("s10", "s200"):
        shutil.copytree(root / f"{name}/split/unlabeled", root / ("u10" if name == "s10" else "u200"))
    assert len(list((root / "u200").glob("*.tar"))) == 200 and len(list((root / "u10").glob("*.tar"))) == 10
    return root


@pytest.fixture
def server(sets):
    with ShardServer(sets) as s:
        yield s


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setenv("MPL_FETCH_RETRIES", "3")
    monkeypatch.setenv("MPL_FETCH_BACKOFF", "0.01")


def _train_args(sets: Path, unlabeled: str, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        TWOMOON,
        "--out",
        out,
        "--set",
        f"data.labeled={sets}/s10/split/labeled",
        "--set",
        f"data.unlabeled={unlabeled}",
        "--set",
        f"data.val={sets}/s10/split/val",
        "--set",
        "data.in_memory=no",
        "--set",
        "data.shuffle_buffer=10",
        "--set",
        "runtime.log_every=1",
        *extra,
    ]


def _private_files() -> list[Path]:
    from mpltools.data import remote

    folder = remote._state.get("folder")
    return sorted(folder.iterdir()) if folder and folder.exists() else []


@contextmanager
def _peak_private_disk() -> Iterator[list[int]]:
    """[the largest total size of the private folder's files], polled every 2 ms while the block runs."""
    peak, done = [0], threading.Event()

    def poll() -> None:
        while not done.is_set():
            size = 0
            for path in _private_files():
                try:
                    size += path.stat().st_size
                except FileNotFoundError:
                    pass
            peak[0] = max(peak[0], size)
            time.sleep(0.002)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        yield peak
    finally:
        done.set()
        poller.join()


# --- what is read, and when ------------------------------------------------------------------------------


def test_info_reads_only_the_manifest_and_verify_streams_each_shard_once(sets, server):
    for location in (f"{server.url}/u200/shard-{{000000..000199}}.tar", f"{server.url}/u200/"):
        report = json.loads(_ok("data", "info", location, "--json"))
        assert report["shards"] == 200 and report["num_samples"] == 4000 and report["checksums"]
    assert server.requests() == [] and server.requests("manifest.json") == ["/u200/manifest.json"] * 2
    report = json.loads(_ok("data", "info", f"{server.url}/u10/", "--verify", "--json"))
    assert report["verified"] and report["counted_samples"] == 200
    assert sorted(server.requests()) == [f"/u10/shard-{i:06d}.tar" for i in range(10)]  # each shard once
    assert _private_files() == []  # every copy deleted after it was read


def _first_step(sets: Path, unlabeled: str, out: Path, server: ShardServer) -> tuple[float, int]:
    """Seconds from the start of `mpl train` (in this process) to its first metrics line, and the shards
    requested until then."""
    seen: list[float] = []
    start = time.monotonic()

    def watch() -> None:
        while not seen and time.monotonic() - start < 120:
            if (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip():
                seen.append(time.monotonic())
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _ok(*_train_args(sets, unlabeled, out, "--set", "schedule.steps=1", "--set", "eval.every=0"))
    watcher.join()
    before = [path for t, path, _, _ in server.log if start <= t < seen[0] and path.endswith(".tar")]
    return seen[0] - start, len(before)


def test_time_to_first_step_does_not_grow_with_the_number_of_shards(sets, server, tmp_path):
    server.rate = 2e6  # 2 MB/s: fetching all 200 shards (10 MB) first would take 5 s
    _first_step(sets, f"{server.url}/u10/{TEN}", tmp_path / "warm", server)  # imports and caches warm
    runs: dict[str, list] = {"ten": [], "many": []}
    for repeat in range(2):  # interleaved, best of 2: the machine's load makes single timings noisy
        runs["ten"].append(_first_step(sets, f"{server.url}/u10/{TEN}", tmp_path / f"ten{repeat}", server))
        runs["many"].append(
            _first_step(sets, f"{server.url}/u200/shard-{{000000..000199}}.tar", tmp_path / f"many{repeat}", server)
        )
    (ten, fetched_ten), (many, fetched_many) = min(runs["ten"]), min(runs["many"])
    print(
        f"time to first step: 10 shards {ten:.2f} s ({fetched_ten} fetched), 200 shards {many:.2f} s "
        f"({fetched_many} fetched), ratio {many / ten:.2f}"
    )
    # one step of 300 unlabelled samples is 15 shards of 20, +1 for the shuffle buffer, +1 downloading ahead
    assert all(fetched <= 17 for _, fetched in runs["ten"] + runs["many"])
    assert many <= max(1.5 * ten, ten + 1.0), (ten, many)  # the goal is 1.5; under a second of noise is let through


def test_peak_temporary_disk_is_a_few_shards_with_two_workers(sets, server, tmp_path):
    server.rate = 4e6
    shard = max(p.stat().st_size for p in (sets / "u200").glob("*.tar"))
    location = f"{server.url}/u200/shard-{{000000..000199}}.tar"
    with _peak_private_disk() as peak:
        code, _, err = _cli(
            *_train_args(sets, location, tmp_path / "run", "--set", "schedule.steps=4", "--set", "data.workers=2")
        )
    assert code == 0, err[-3000:]
    requested = server.requests()
    assert len(requested) >= 40 and len(set(requested)) == len(requested)  # 4 steps of 15 shards, none fetched twice
    assert 0 < peak[0] <= (2 * 2 + 1) * shard, (peak[0], shard)  # workers x (1 read + 1 ahead) + 1
    assert _private_files() == []  # every copy deleted (the folder itself goes at exit: see the spawn and SIGTERM tests)
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert records[-2]["data/shards_fetched"] >= 1 and "data/fetch_MB_per_s" in records[0]
    assert "MB/s=" in err


# --- faults ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def student(sets) -> Path:
    out = sets / "run-local"
    _ok("-q", *_train_args(sets, str(sets / "u10"), out, "--set", "schedule.steps=2"))
    return out / "student.safetensors"


def _eval(location: str, student: Path) -> tuple[int, str, str]:
    return _cli("eval", student, "--data", location, "--json")


def test_transient_faults_are_retried_and_give_the_same_result(sets, server, student):
    reference = json.loads(_ok("eval", student, "--data", sets / "s10/all", "--json"))
    server.faults = {
        "/s10/all/shard-000002.tar": ["reset"],
        "/s10/all/shard-000005.tar": ["503", "503"],
        "/s10/all/shard-000007.tar": ["short"],
    }
    code, out, err = _eval(f"{server.url}/s10/all/{LABELLED}", student)
    assert code == 0, err
    report = json.loads(out)
    assert report.pop("data") == f"{server.url}/s10/all/{LABELLED}"
    assert report == {k: v for k, v in reference.items() if k != "data"}
    requested = server.requests()
    assert requested.count("/s10/all/shard-000002.tar") == 2 and requested.count("/s10/all/shard-000005.tar") == 3
    assert requested.count("/s10/all/shard-000007.tar") == 2 and "retrying" in err
    assert _private_files() == []


@pytest.mark.parametrize(
    ("fault", "expected", "tries"),
    [
        ("404", "download failed (HTTP 404", 1),
        ("wrong", "sha256", 1),
        ("reset", "download failed after 3 attempt(s)", 3),
        ("short", "download failed after 3 attempt(s) (the transfer ended after", 3),
    ],
)
def test_a_bad_shard_stops_the_command_naming_its_url(sets, server, student, fault, expected, tries):
    url = f"{server.url}/s10/all/shard-000003.tar"
    server.faults = {"/s10/all/shard-000003.tar": [fault] * 3}
    code, _, err = _eval(f"{server.url}/s10/all/{LABELLED}", student)
    assert code == 1 and f"{url}: {expected}" in err, err[-2000:]
    assert "mpl-shards" not in err and "Traceback" not in err
    assert server.requests().count("/s10/all/shard-000003.tar") == tries
    assert _private_files() == []


def test_data_manifest_streams_each_shard_once_with_two_on_disk(sets, server, tmp_path):
    """A remote set without a manifest: refused before any shard is requested; `mpl data manifest` reads each shard once
    (a reset one again), holds at most two on disk, and writes what the importer wrote; uploaded, the set streams."""
    plain = sets / "p200"
    plain.mkdir(exist_ok=True)
    for shard in (sets / "u200").glob("*.tar"):
        shutil.copyfile(shard, plain / shard.name)
    location = f"{server.url}/p200/shard-{{000000..000199}}.tar"
    code, _, err = _cli("data", "info", location)
    assert code == 2 and "mpl data manifest" in err and server.requests() == []
    server.rate, server.faults = 4e6, {"/p200/shard-000007.tar": ["reset"]}
    shard = max(p.stat().st_size for p in plain.glob("*.tar"))
    with _peak_private_disk() as peak:
        code, out, err = _cli("data", "manifest", location, "--classes", "upper,lower", "--out", plain / "manifest.json")
    assert code == 0, err[-3000:]
    requested = server.requests()
    assert sorted(set(requested)) == [f"/p200/shard-{i:06d}.tar" for i in range(200)]
    assert len(requested) == 201 and requested.count("/p200/shard-000007.tar") == 2  # once each, the reset one again
    assert 0 < peak[0] <= 2 * shard, (peak[0], shard)  # the shard being read + the one downloading ahead
    assert _private_files() == []
    written, imported = (json.loads((d / "manifest.json").read_text()) for d in (plain, sets / "u200"))
    assert {k: v for k, v in written.items() if k != "provenance"} == {
        k: v for k, v in imported.items() if k != "provenance"
    }  # the same shards: the same counts, sizes and checksums
    server.rate = 0
    server.clear()
    report = json.loads(_ok("data", "info", location, "--json"))
    assert report["num_samples"] == 4000 and report["checksums"] and server.requests() == []


def test_split_and_an_empty_set_name_the_url(sets, server, tmp_path):
    server.faults = {"/s10/all/shard-000001.tar": ["wrong"]}
    location = f"{server.url}/s10/all/{LABELLED}"
    code, _, err = _cli("data", "split", location, "--labeled-per-class", "1", "--out", tmp_path / "s")
    assert code == 1 and f"{server.url}/s10/all/shard-000001.tar: sha256" in err and "mpl-shards" not in err, err
    assert not (tmp_path / "s").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    manifest = json.loads((sets / "u10/manifest.json").read_text())
    (empty / "manifest.json").write_text(json.dumps({**manifest, "shards": [], "num_samples": 0}))
    with ShardServer(tmp_path) as other:
        code, _, err = _cli("data", "info", f"{other.url}/empty/")
        assert code == 1 and f"{other.url}/empty/: {other.url}/empty/manifest.json lists no shards" in err
        code, _, err = _cli("data", "info", f"{other.url}/nothing/")
        assert code == 1 and f"{other.url}/nothing/manifest.json" in err and "name the shards" in err


def test_fsspec_urls_through_the_memory_filesystem(sets, student):
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    for path in (sets / "s10/all").iterdir():
        memory.pipe(f"/mplset/{path.name}", path.read_bytes())
    reference = json.loads(_ok("eval", student, "--data", sets / "s10/all", "--json"))
    for location in ("memory://mplset/", f"memory://mplset/{LABELLED}"):
        report = json.loads(_ok("eval", student, "--data", location, "--json"))
        assert report.pop("data") == location and report == {k: v for k, v in reference.items() if k != "data"}
    assert json.loads(_ok("data", "info", "memory://mplset/", "--verify", "--json"))["verified"]
    tampered = bytearray((sets / "s10/all/shard-000004.tar").read_bytes())
    tampered[1000] ^= 0x01
    memory.pipe("/mplset/shard-000004.tar", bytes(tampered))
    code, _, err = _eval("memory://mplset/", student)
    assert code == 1 and "memory://mplset/shard-000004.tar: sha256" in err, err[-2000:]
    memory.pipe("/mplset/shard-000004.tar", (sets / "s10/all/shard-000004.tar").read_bytes())
    memory.rm("/mplset/shard-000006.tar")
    code, _, err = _eval(f"memory://mplset/{LABELLED}", student)
    assert code == 1 and "memory://mplset/shard-000006.tar: cannot be read (FileNotFoundError" in err, err[-2000:]
    assert _private_files() == []
    # Without its manifest.json the set is refused; `mpl data manifest` writes one through the same filesystem.
    memory.pipe("/mplset/shard-000006.tar", (sets / "s10/all/shard-000006.tar").read_bytes())
    memory.rm("/mplset/manifest.json")
    code, _, err = _eval(f"memory://mplset/{LABELLED}", student)
    assert code == 2 and "there is no memory://mplset/manifest.json" in err, err[-2000:]
    written = json.loads(_ok("data", "manifest", f"memory://mplset/{LABELLED}", "--classes", "upper,lower"))
    original = json.loads((sets / "s10/all/manifest.json").read_text())
    assert {k: v for k, v in written.items() if k != "provenance"} == {k: v for k, v in original.items() if k != "provenance"}
    memory.pipe("/mplset/manifest.json", json.dumps(written).encode())
    report = json.loads(_ok("eval", student, "--data", f"memory://mplset/{LABELLED}", "--json"))
    assert report.pop("data") == f"memory://mplset/{LABELLED}" and report == {k: v for k, v in reference.items() if k != "data"}
    assert _private_files() == []


# --- SIGTERM, resume, two processes -------------------------------------------------------------------------


def _sigterm_when_downloading(args: list, tmp: Path) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(  # torch keeps its compile cache under TMPDIR unless told otherwise: not ours to remove
        [sys.executable, "-m", "mpltools", *map(str, args)],
        cwd=REPO,
        env=env(TMPDIR=str(tmp), TORCHINDUCTOR_CACHE_DIR=str(tmp.parent / "torch-cache")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp.glob("mpl-shards-*/*.tar")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_sigterm_during_a_download_leaves_nothing_behind(sets, server, tmp_path):
    server.rate = 20e3  # a shard takes ~2 s
    for name, args in (
        ("info", ["data", "info", "--verify", f"{server.url}/u10/"]),
        ("train", _train_args(sets, f"{server.url}/u10/{TEN}", tmp_path / "run", "--set", "data.workers=2")),
    ):
        tmp = tmp_path / f"tmp-{name}"
        tmp.mkdir()
        r = _sigterm_when_downloading(args, tmp)
        assert r.returncode == 130, (name, r.stderr[-2000:])
        assert list(tmp.iterdir()) == [], (name, list(tmp.rglob("*")))


_WORKERS_SCRIPT = """
import json, multiprocessing, sys
from mpltools.data import remote
from mpltools.data.augment_spec import AugmentSpec
from mpltools.data.loaders import UNLABELED, StreamConfig, make_stream
from mpltools.data.opening import open_shard_set

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[2], force=True)
    cfg = StreamConfig("unlabeled", 40, seed=0, stream_id=UNLABELED, workers=1, shuffle_buffer=10, prefetch=1)
    stream = make_stream(open_shard_set(sys.argv[1]), cfg, AugmentSpec(kind="none"), in_memory=False)
    sums = [float(next(stream)["weak"].double().sum()) for _ in range(6)]
    print(json.dumps({"sums": sums, "shards": remote.counters()[0]}))
"""


@pytest.mark.slow  # ~20 s: the spawned worker imports torch again (tests/unit/test_remote_workers.py is the quick check)
@pytest.mark.parametrize("method", ["spawn"])  # fork: every other test with workers
def test_workers_share_the_private_folder_and_counters_under_every_start_method(sets, server, tmp_path, method):
    script = tmp_path / "workers.py"
    script.write_text(_WORKERS_SCRIPT)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = subprocess.run(
        [sys.executable, str(script), f"{server.url}/u10/", method],
        cwd=REPO,
        env=env(TMPDIR=str(tmp)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    reference = [float(b.sum()) for b in _local_batches(sets / "u10")]
    assert report["sums"] == reference  # the same batches as from the local folder
    assert 10 <= report["shards"] <= len(server.requests(""))  # the workers' downloads (all 10 shards) counted in the main
    assert list(tmp.glob("mpl-shards-*")) == []  # one private folder, removed by the main process: none left by a worker


def _local_batches(folder: Path) -> list:
    from mpltools.data.augment_spec import AugmentSpec
    from mpltools.data.loaders import UNLABELED, StreamConfig, make_stream
    from mpltools.data.opening import open_shard_set

    cfg = StreamConfig("unlabeled", 40, seed=0, stream_id=UNLABELED, workers=1, shuffle_buffer=10, prefetch=1)
    stream = make_stream(open_shard_set(folder), cfg, AugmentSpec(kind="none"), in_memory=False)
    return [next(stream)["weak"].double() for _ in range(6)]


def _weights(run: Path) -> dict:
    return load_file(str(run / "student.safetensors"))


def test_a_run_stopped_by_a_dead_server_resumes_to_the_same_student(sets, server, tmp_path):
    location = f"{server.url}/u200/shard-{{000000..000199}}.tar"
    extra = ("--set", "schedule.steps=6", "--set", "checkpoint.every=2")
    _ok(*_train_args(sets, location, tmp_path / "straight", *extra))
    straight = server.requests()
    server.clear()
    server.down_after = 40  # the server dies during step 3 (15 shards a step)
    code, _, err = _cli(*_train_args(sets, location, tmp_path / "resumed", *extra))
    assert code == 1 and f"{server.url}/u200/shard-" in err and "download failed after 3 attempt(s) (HTTP 503" in err, err[-2000:]
    assert "re-run the same command" in err
    assert (tmp_path / "resumed/state").exists() and not (tmp_path / "resumed/student.safetensors").exists()
    before = set(server.requests()[:40])
    server.down, server.down_after = False, None
    server.clear()
    _ok(*_train_args(sets, location, tmp_path / "resumed", *extra))
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    resumed = server.requests()
    again = [p for p in resumed if p in before]
    # The state of step 2 was saved after 600 unlabelled samples, 30 whole shards of 20 (+10 samples of the 31st in the
    # shuffle buffer): the resumed run reads none of those 30 again except the ones whose samples the buffer held.
    print(
        f"the straight run fetched {len(straight)} shards; the resumed one {len(resumed)}, {len(again)} of them fetched "
        f"before the stop; {len(straight) - len(resumed)} fewer than a replay of the epoch"
    )
    assert len(set(resumed)) == len(resumed) and set(resumed) <= set(straight)
    assert len(straight) - 30 <= len(resumed) <= len(straight) - 30 + HELD


def test_a_failing_streamed_run_with_two_workers_stops_within_seconds(sets, server, tmp_path):
    """A download that fails for good ends the run at once, its loader workers with it (a failing 2-worker streamed
    run used to take 6-12 s to shut down)."""
    location = f"{server.url}/u200/shard-{{000000..000199}}.tar"
    server.down_after = 40
    code, _, err = _cli(*_train_args(sets, location, tmp_path / "run", "--set", "schedule.steps=6", "--set", "data.workers=2"))
    ended = time.monotonic()
    failed = [t for t, _, status, _ in server.log if status == 503]
    assert code == 1 and "download failed after 3 attempt(s) (HTTP 503" in err, err[-2000:]
    assert ended - failed[-1] < 4.0, f"{ended - failed[-1]:.1f} s from the last failed download to the exit"
    assert not (tmp_path / "run").exists() and _private_files() == []


@pytest.mark.slow
def test_two_processes_each_fetch_only_their_own_shards(sets, server, tmp_path):
    args = _train_args(sets, f"{server.url}/u200/shard-{{000000..000199}}.tar", tmp_path / "two", "--set", "schedule.steps=2")
    cmd = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        "-m",
        "mpltools",
        *map(str, args),
    ]
    r = subprocess.run(
        cmd, cwd=REPO, env=env(ACCELERATE_USE_CPU="1"), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    assert r.returncode == 0, r.stderr[-3000:]
    requested = server.requests()
    # 2 steps of 300 samples in all: 30 shards of 20, each fetched by the one process that reads it
    assert len(requested) >= 30 and len(set(requested)) == len(requested), requested
    assert os.path.exists(tmp_path / "two/student.safetensors")
