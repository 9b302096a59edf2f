"""`mpl env`: versions, devices and accelerate's configuration for bug reports."""

from __future__ import annotations

import json
import platform

import torch

from mpltools import __version__
from mpltools.commands import env


def test_env_json_reports_versions_devices_and_the_accelerate_config(run_cli, tmp_path, monkeypatch):
    config = tmp_path / "default_config.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\nnum_processes: 2\nmixed_precision: bf16\n")
    monkeypatch.setattr(env, "default_accelerate_config", lambda: config)
    ran = run_cli("env", "--json")
    assert ran.exit_code == 0, ran.stderr
    report = json.loads(ran.stdout)
    v = report["versions"]
    assert v["python"] == platform.python_version() and v["mpltools"] == __version__
    assert v["torch"] == torch.__version__ and all(v[k] for k in ("accelerate", "safetensors", "webdataset"))
    assert report["devices"]["cuda_available"] == torch.cuda.is_available()
    assert len(report["devices"]["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert report["accelerate_config"] == {
        "path": str(config),
        "found": True,
        "config": {"compute_environment": "LOCAL_MACHINE", "num_processes": 2, "mixed_precision": "bf16"},
    }


def test_env_text_names_a_missing_or_broken_config(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(env, "default_accelerate_config", lambda: tmp_path / "none.yaml")
    ran = run_cli("env")
    assert ran.exit_code == 0
    lines = ran.stdout.splitlines()
    assert f"torch: {torch.__version__}" in lines and f"mpltools: {__version__}" in lines
    assert f"accelerate config: none at {tmp_path / 'none.yaml'}" in ran.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [unclosed\n")
    text = env.render(env.collect(broken))
    assert f"accelerate config: {broken} could not be read:" in text
