"""CI-size version of recipes/fashion_study.py, through the committed script, on a tiny IDX set the test writes.

The tiny set (300 training and 100 test images, 28x28, the class drawn as a bright bar at a class-dependent
row) only proves the chain: IDX import of both parts, the 40-label split with no val part, training, the
feedback-only runs with their diagnostics, `mpl eval` on the imported test part, the table and results.json.
"""

from __future__ import annotations

import gzip
import json
import struct
import tomllib
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.helpers import REPO, python, run_script


def _idx(values: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, values.ndim]) + struct.pack(f">{values.ndim}I", *values.shape) + values.astype(np.uint8).tobytes()


def _write_fashion(root: Path, counts=(("train", 300), ("t10k", 100))) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for stem, n in counts:
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 + 2 * c : 4 + 2 * c, 4:24] = 255
        (root / f"{stem}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
        (root / f"{stem}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))


@pytest.mark.slow
def test_fashion_study_ci_size(tmp_path):
    _write_fashion(tmp_path / "idx")
    out = tmp_path / "study"
    r = run_script(
        "recipes/fashion_study.py",
        "--labels",
        "40",
        "--seeds",
        "0",
        "--steps",
        "12",
        "--baselines",
        "supervised",
        "--variants",
        "fo-soft",
        "--idx",
        str(tmp_path / "idx"),
        "--out",
        str(out),
        "--set",
        "runtime.log_every=4",
    )
    report = json.loads((out / "results.json").read_text())
    study = report["studies"]["40"]
    s = study["summary"]
    assert set(s) == {"supervised", "fo-soft"}, s
    assert all(0.0 <= v <= 1.0 for m in s.values() for v in m["values"])
    assert all(m["wall_seconds"] > 0 for m in s.values())
    assert "| supervised |" in r.stdout and "| fo-soft |" in r.stdout and "wall s/run" in r.stdout
    assert "median_abs_h" in r.stdout  # the feedback diagnostics table
    row = study["per_seed"][0]
    assert row["diagnostics"]["fo-soft"]["median_t_grad_norm_mpl"] is not None
    cmds = row["commands"]
    test = str(out / "data" / "test")
    assert any("--labeled-per-class 4 --val-per-class 0" in c for c in cmds), cmds
    assert all(f"--data {test}" in c for c in cmds if c.startswith("mpl eval")), cmds
    assert any("recipes/fashion_mnist_40.toml" in c and "method.uda_weight=0" in c for c in cmds), cmds
    assert [c.split()[3] for c in report["import"]] == ["fashion-mnist"] * 2
    # The recipes now ship the screened labels (argmax, weak view); this study keeps the paper's, and the
    # feedback-only variants still set their own kind of label.
    runs = out / "labels40" / "runs" / "seed0"
    saved = {m: tomllib.loads((runs / m / "recipe.toml").read_text())["method"] for m in ("supervised", "fo-soft")}
    assert saved["supervised"]["pseudo_label_view"] == saved["fo-soft"]["pseudo_label_view"] == "strong", saved
    assert (saved["supervised"]["pseudo_labels"], saved["fo-soft"]["pseudo_labels"]) == ("sample", "soft"), saved
    assert json.loads((out / "data" / "test" / "manifest.json").read_text())["num_samples"] == 100


def test_fashion_study_without_idx_files_is_a_usage_error(tmp_path):
    r = python("recipes/fashion_study.py", "--idx", tmp_path / "none", "--out", tmp_path / "o", cwd=REPO)
    assert r.returncode == 2 and r.stdout == ""
    assert str(tmp_path / "none") in r.stderr and "dataset-fashion-mnist" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
