"""The GPU check script (benchmarks/gpu_check.py) in its CPU dry mode: it runs end to end, writes its JSON
and prints its table (the GPU figures themselves are recorded in benchmarks/README.md when a GPU is lent)."""

import importlib.util
import json
import math

from tests.e2e.helpers import REPO


def test_gpu_check_dry_mode_runs_and_reports_every_section(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gpu_check.json"
    assert module.main(["--dry", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["dry"] is True and report["model"]["name"] == "wide_resnet"
    for precision in ("bf16", "fp16"):
        a = report["agreement"][precision]
        assert a["steps_compared"] + a["steps_skipped_overflow"] == 3 and a["steps_compared"] >= 1
        assert 0.0 <= a["h_sign_agreement"] <= 1.0 and math.isfinite(a["h_median_relative_error"])
        assert 0.9 <= a["teacher_mpl_grad_cosine_min"] <= 1.0 + 1e-6
    assert {(s["precision"], s["channels_last"]) for s in report["speed"]} == {
        (p, cl) for p in ("no", "bf16", "fp16") for cl in (False, True)
    }
    assert all(s["step_ms"] > 0 and s["images_per_s"] > 0 for s in report["speed"])
    assert 0.0 <= report["data_wait"]["wait_fraction_steady"] <= 1.0
    printed = capsys.readouterr().out
    assert "precision agreement with fp32" in printed and "| bf16 |" in printed and "data wait" in printed
