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


def test_env_lists_optional_packages_and_tracker_variables_with_secrets_masked(run_cli, tmp_path, monkeypatch):
    from importlib import metadata

    monkeypatch.setattr(env, "default_accelerate_config", lambda: tmp_path / "none.yaml")
    secrets = {"WANDB_API_KEY": "wandb-secret-123", "HF_TOKEN": "hf_secret_456", "HUGGING_FACE_HUB_TOKEN": "hf_secret_789"}
    plain = {"WANDB_PROJECT": "my-project", "WANDB_MODE": "offline", "HF_HOME": "/tmp/hf", "ACCELERATE_MIXED_PRECISION": "bf16"}
    for name, value in {**secrets, **plain}.items():
        monkeypatch.setenv(name, value)
    ran = run_cli("env", "--json")
    assert ran.exit_code == 0, ran.stderr
    report = json.loads(ran.stdout)

    def installed(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    optional = ("tensorboard", "wandb", "mlflow", "matplotlib", "scikit-learn", "fsspec")
    assert report["optional"] == {name: installed(name) for name in optional}
    assert report["environment"] == {**report["environment"], **plain, **{name: "***" for name in secrets}}
    assert not any(value in ran.stdout for value in secrets.values())
    text = run_cli("env").stdout
    assert not any(value in text for value in secrets.values())
    assert "env WANDB_PROJECT=my-project" in text.splitlines() and "env WANDB_API_KEY=***" in text.splitlines()
    for name in optional:
        assert f"{name}: {installed(name) or 'not installed'} (optional)" in text.splitlines()
