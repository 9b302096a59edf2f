"""`mpl plot curves` and `mpl plot regions` through the CLI: PNGs written with the expected size,
several runs, runs without validation or teacher metrics, and clear refusals."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import cli_in_fresh_python, mpl, replay, sets

TWOMOON = "recipes/tiny/twomoon.toml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; fails unless the file is a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The tiny TwoMoon chain (MPL run with val metrics) plus a supervised run without validation."""
    root = tmp_path_factory.mktemp("plot")
    replay(TWOMOON, root)
    mpl(
        "train",
        "recipes/tiny/twomoon.toml",
        *sets("method.name=supervised", 'data.val=""', "schedule.steps=60", "runtime.log_every=20"),
        "--out",
        "runs/sl-noval",
        "--force",
        cwd=root,
    )
    return root


@pytest.mark.slow
def test_curves_of_several_runs(work):
    r = mpl("plot", "curves", "runs/tiny/twomoon", "runs/sl-noval", "--out", "pics/curves.png", cwd=work)
    assert r.stdout.strip() == "pics/curves.png"
    out = work / "pics/curves.png"
    # six panels (both losses, h, baseline, both val accuracies) in 3 columns x 2 rows at 100 dpi
    width, height = png_size(out)
    assert (width, height) == (1380, 690)
    assert out.stat().st_size > 20_000
    assert not list(out.parent.glob(".*tmp*")), "a temporary file was left behind"


@pytest.mark.slow
def test_curves_of_a_run_without_val_or_teacher_metrics(work):
    records = [json.loads(line) for line in (work / "runs/sl-noval/metrics.jsonl").read_text().splitlines()]
    assert records and not any(k.startswith(("val/", "teacher/", "feedback/")) for rec in records for k in rec)
    r = mpl("plot", "curves", "runs/sl-noval/metrics.jsonl", "--out", "sl.png", "--smooth", "2", cwd=work)
    assert r.stdout.strip() == "sl.png"
    assert png_size(work / "sl.png") == (460, 370)  # only the student-loss panel


@pytest.mark.slow
def test_curves_refuses_overwrite_and_bad_input(work):
    mpl("plot", "curves", "runs/tiny/twomoon", "--out", "once.png", cwd=work)
    before = (work / "once.png").read_bytes()
    r = mpl("plot", "curves", "runs/tiny/twomoon", "--out", "once.png", cwd=work, check=False)
    assert r.returncode == 1 and "--force" in r.stderr and r.stdout == ""
    assert (work / "once.png").read_bytes() == before
    mpl("plot", "curves", "runs/tiny/twomoon", "--out", "once.png", "--force", "--labels", "MPL", cwd=work)
    r = mpl("plot", "curves", "runs/does-not-exist", "--out", "x.png", cwd=work, check=False)
    assert r.returncode == 1 and "metrics.jsonl" in r.stderr and "Traceback" not in r.stderr
    r = mpl("plot", "curves", "runs/tiny/twomoon", "--out", "x.jpg", cwd=work, check=False)
    assert r.returncode == 2 and ".png" in r.stderr
    r = mpl(
        "plot", "curves", "runs/tiny/twomoon", "runs/sl-noval", "--labels", "only-one", "--out", "x.png", cwd=work, check=False
    )
    assert r.returncode == 2 and "--labels" in r.stderr
    assert not (work / "x.png").exists() and not (work / "x.jpg").exists()


@pytest.mark.slow
def test_regions_like_figure_2(work):
    ckpts = [
        "runs/tiny/twomoon/student.safetensors",
        "runs/tiny/twomoon/teacher.safetensors",
        "runs/sl-noval/student.safetensors",
    ]
    r = mpl(
        "plot",
        "regions",
        *ckpts,
        "--data",
        "data/tiny/twomoon/all",
        "--labeled",
        "data/tiny/twomoon/split/labeled",
        "--titles",
        "MPL student,MPL teacher,Supervised",
        "--resolution",
        "80",
        "--out",
        "fig2.png",
        cwd=work,
    )
    assert r.stdout.strip() == "fig2.png"
    width, height = png_size(work / "fig2.png")
    assert (width, height) == (1440, 390)  # three 4.8 x 3.4 inch panels in one row, plus the legend strip
    assert (work / "fig2.png").stat().st_size > 20_000


@pytest.mark.slow
def test_regions_reads_checkpoint_from_stdin_and_unlabelled_data(work):
    r = mpl(
        "plot",
        "regions",
        "-",
        "--data",
        "data/tiny/twomoon/split/unlabeled",
        "--out",
        "one.png",
        cwd=work,
        stdin="runs/tiny/twomoon/student.safetensors\n",
    )
    assert r.stdout.strip() == "one.png"
    assert png_size(work / "one.png") == (480, 390)


@pytest.mark.slow
def test_regions_refuses_a_checkpoint_that_is_not_2d(work, tmp_path):
    from mpltools.checkpoint import CheckpointMeta, save_model
    from mpltools.models import build_model

    model = build_model("mlp", 10, (8, 8, 1), hidden=[4], activation="relu", init_range=None)
    meta = CheckpointMeta(
        role="student",
        architecture="mlp",
        architecture_kwargs={"hidden": [4], "activation": "relu", "init_range": None},
        num_classes=10,
        input_shape=[8, 8, 1],
        input_spec={"kind": "image", "encoding": "png", "shape": [8, 8, 1], "dtype": "uint8"},
        normalisation={"name": "none", "mean": [0.0], "std": [1.0]},
        augment={"kind": "none", "image_size": 0},
        classes=[str(c) for c in range(10)],
    )
    save_model(tmp_path / "digits.safetensors", model, meta)
    r = mpl(
        "plot",
        "regions",
        tmp_path / "digits.safetensors",
        "--data",
        "data/tiny/twomoon/all",
        "--out",
        "no.png",
        cwd=work,
        check=False,
    )
    assert r.returncode == 1 and r.stdout == ""
    assert "2-D" in r.stderr and "[8, 8, 1]" in r.stderr and "Traceback" not in r.stderr
    assert not (work / "no.png").exists()
    # 2-D checkpoint but the data are not 2-D points
    r = mpl(
        "plot",
        "regions",
        "runs/tiny/twomoon/student.safetensors",
        "--data",
        "runs/tiny/twomoon",
        "--out",
        "no.png",
        cwd=work,
        check=False,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    r = mpl(
        "plot",
        "regions",
        "runs/tiny/twomoon/student.safetensors",
        "--data",
        "data/tiny/twomoon/all",
        "--titles",
        "a,b",
        "--out",
        "no.png",
        cwd=work,
        check=False,
    )
    assert r.returncode == 2 and "--titles" in r.stderr
    assert not (work / "no.png").exists()


@pytest.mark.slow
def test_clear_error_without_matplotlib(work, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.chdir(work)
    r = run_cli("plot", "curves", "runs/tiny/twomoon", "--out", "nompl.png")
    assert r.exit_code == 1 and "meta-pseudo-labels[plot]" in r.stderr
    assert not (work / "nompl.png").exists()
    ckpt, data = "runs/tiny/twomoon/student.safetensors", "data/tiny/twomoon/all"
    r = run_cli("plot", "regions", ckpt, "--data", data, "--out", "nompl.png")
    assert r.exit_code == 1 and "meta-pseudo-labels[plot]" in r.stderr, r.stderr
    assert not (work / "nompl.png").exists()


def test_plot_help_does_not_import_torch_or_matplotlib():
    r = cli_in_fresh_python(["plot", "regions", "--help"], never=("torch", "matplotlib"))
    assert r.returncode == 0, r.stderr[-2000:]
