"""Several processes open one run folder (`accelerate launch`): each decides from the folder as it was before the main
process writes to it. Before, a process that looked while the main process was writing `recipe.toml` found a folder
half made and refused it ("exists and is not a run folder"), which ended the whole launch; with --force a process could
refuse a folder the main process was about to empty. Threads stand in for the processes, a threading.Barrier for theirs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from mpltools import run_folder
from mpltools.config import Recipe


def _two_ranks(out: Path, recipe: Recipe, force: bool, monkeypatch) -> dict:
    barrier = threading.Barrier(2, timeout=30)
    writing = threading.Event()
    real_write = run_folder._write_text

    def slow_write(path: Path, text: str) -> None:  # the main process is slow to write recipe.toml
        writing.set()
        half = path.parent / f".{path.name}.tmp-test"  # what an atomic write leaves in the folder meanwhile
        half.write_text("half")
        time.sleep(0.3)
        half.unlink()
        real_write(path, text)

    monkeypatch.setattr(run_folder, "_write_text", slow_write)
    results: dict = {}

    def rank(i: int) -> None:
        try:
            if i == 1:  # look as late as the main process lets one: once it waits for us or has started writing
                while barrier.n_waiting == 0 and not writing.is_set():
                    time.sleep(0.001)
            results[i] = run_folder.prepare_run_folder(out, recipe, force, i == 0, barrier.wait)
        except Exception as exc:  # noqa: BLE001 - the test reports what each rank got
            results[i] = exc

    threads = [threading.Thread(target=rank, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_a_new_run_folder_is_decided_by_every_process_before_the_main_process_writes_it(tmp_path, monkeypatch):
    out = tmp_path / "runs/two"
    assert _two_ranks(out, Recipe(), False, monkeypatch) == {0: None, 1: None}
    assert (out / "recipe.toml").is_file() and sorted(p.name for p in out.iterdir()) == ["recipe.toml"]


def test_force_on_another_recipe_s_run_is_a_restart_for_every_process(tmp_path, monkeypatch):
    out = tmp_path / "run"
    other = Recipe()
    other.schedule.steps = other.schedule.steps + 1
    out.mkdir()
    (out / "recipe.toml").write_text(run_folder.to_toml(other))
    (out / "metrics.jsonl").write_text("{}\n")
    assert _two_ranks(out, Recipe(), True, monkeypatch) == {0: None, 1: None}
    assert sorted(p.name for p in out.iterdir()) == ["recipe.toml"]
    assert run_folder.check_run_folder(out, Recipe()) == "resume"  # the folder now holds this recipe's (new) run


def test_one_process_needs_no_barrier(tmp_path):
    out = tmp_path / "run"
    assert run_folder.prepare_run_folder(out, Recipe(), False, True) is None
    assert run_folder.check_run_folder(out, Recipe()) == "resume"
