"""One exit code per kind of fault, whichever command meets it (errors.py, README "exit codes").

The same bad checkpoint (missing, not safetensors, NaN weights, another label set) handed to every
command that reads one gives exit 1 (bad file content), names the file, prints no traceback and
leaves no output. `mpl recipes validate` is the one documented exception: it is a recipe check, so
everything it finds is a recipe error (exit 2), naming the key as well as the file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.e2e.helpers import TWOMOON, cli, corrupt_shards, edit_manifest, ok, sets, twomoon_split, with_weights


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    from mpltools.checkpoint import read_checkpoint, save_model
    from mpltools.models import build_model

    root = tmp_path_factory.mktemp("codes")
    split = twomoon_split(root)
    parts = {k: str(split / k) for k in ("labeled", "unlabeled", "val")}
    base = sets(*(f"data.{k}={v}" for k, v in parts.items()), "schedule.steps=1", "eval.every=0")
    ok("train", TWOMOON, *base, "--set", "method.name=supervised", "--out", root / "run")
    good = root / "run/student.safetensors"
    _, meta = read_checkpoint(good)
    three = build_model(meta.architecture, 3, tuple(meta.input_shape), **meta.architecture_kwargs)
    save_model(root / "three.safetensors", three, dataclasses.replace(meta, num_classes=3, classes=["a", "b", "c"]))
    (root / "garbage.safetensors").write_bytes(b"\x00not a checkpoint" * 10)
    bad = {
        "missing": str(root / "gone.safetensors"),
        "garbage": str(root / "garbage.safetensors"),
        "nan": with_weights(good, root / "nan.safetensors", lambda t: next(iter(t.values())).fill_(float("nan"))),
        "classes": str(root / "three.safetensors"),
    }
    labeled = Path(parts["labeled"])
    (root / "notjson").mkdir()
    (root / "notjson/manifest.json").write_text("{ not json")
    data = {
        "missing": str(root / "nowhere"),
        "notjson": str(root / "notjson"),
        "negative": edit_manifest(labeled, root / "negative", lambda m: m.update(num_samples=-1)),
        "corrupt": corrupt_shards(labeled, root / "corrupt"),
    }
    return dict(root=root, base=base, bad=bad, data=data, ck=str(good), **parts)


COMMANDS = {
    "eval": lambda w, ck: ["eval", ck, "--data", w["val"]],
    "eval-predictions": lambda w, ck: ["eval", ck, "--data", w["val"], "--predictions", "OUT"],
    "finetune": lambda w, ck: ["finetune", ck, "--labeled", w["labeled"], "--out", "OUT"],
    "filter-unlabeled": lambda w, ck: ["data", "filter-unlabeled", w["unlabeled"], "--model", ck, "--top-k", "1", "--out", "OUT"],
    "train-pseudo-label-teacher": lambda w, ck: [
        "train",
        TWOMOON,
        *w["base"],
        *sets("method.name=pseudo-label", f"method.teacher_checkpoint={ck}"),
        "--out",
        "OUT",
    ],
    "reduced-predict": lambda w, ck: ["reduced", "predict", ck, "--data", w["labeled"], "--out", "OUT"],
}
BAD = ["missing", "garbage", "nan", "classes"]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_the_same_bad_checkpoint_gives_exit_1_from_every_command(world, tmp_path, command, bad):
    _exits_1_naming(world["bad"][bad], COMMANDS[command](world, world["bad"][bad]), tmp_path)


def _exits_1_naming(bad: str, argv: list, tmp_path) -> None:
    """`mpl ARGV` (OUT: a folder two levels below tmp_path) exits 1, names `bad` in an error line, prints no
    traceback and leaves no output or parent folder."""
    out = tmp_path / "deep" / "out"
    code, text = cli(*[out if a == "OUT" else a for a in argv])
    assert code == 1, text[-2000:]
    errors = "\n".join(line for line in text.splitlines() if line.startswith("error:"))
    assert Path(bad).name in errors, text[-2000:]
    assert "Traceback" not in text
    assert not (tmp_path / "deep").exists(), "a failed command left its --out (or the parents it created)"


@pytest.mark.parametrize("bad", BAD)
def test_recipes_validate_reports_a_bad_teacher_checkpoint_as_a_recipe_error(world, bad):
    ck = world["bad"][bad]
    code, text = cli(
        "recipes",
        "validate",
        TWOMOON,
        *world["base"],
        *sets("method.name=pseudo-label", f"method.teacher_checkpoint={ck}"),
        "--out",
        world["root"] / "never",
    )
    assert code == 2 and "method.teacher_checkpoint" in text and Path(ck).name in text, text[-2000:]
    assert "Traceback" not in text and not (world["root"] / "never").exists()


DATA_COMMANDS = {
    "eval": lambda w, d: ["eval", w["ck"], "--data", d],
    "finetune": lambda w, d: ["finetune", w["ck"], "--labeled", d, "--out", "OUT"],
    "data-info": lambda w, d: ["data", "info", d, "--verify"],
    "data-split": lambda w, d: ["data", "split", d, "--labeled-per-class", "1", "--out", "OUT"],
    "filter-unlabeled": lambda w, d: ["data", "filter-unlabeled", d, "--model", w["ck"], "--top-k", "1", "--out", "OUT"],
    "train": lambda w, d: [
        "train",
        TWOMOON,
        *w["base"],
        *sets("method.name=supervised", f"data.labeled={d}"),
        "--out",
        "OUT",
    ],
    "reduced-predict": lambda w, d: ["reduced", "predict", w["ck"], "--data", d, "--out", "OUT"],
}
BAD_DATA = ["missing", "notjson", "negative", "corrupt"]


@pytest.mark.parametrize("bad", BAD_DATA)
@pytest.mark.parametrize("command", list(DATA_COMMANDS))
def test_the_same_bad_shard_set_gives_exit_1_from_every_command(world, tmp_path, command, bad):
    _exits_1_naming(world["data"][bad], DATA_COMMANDS[command](world, world["data"][bad]), tmp_path)
