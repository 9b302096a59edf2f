"""`mpl env`: what a bug report needs — versions (optional packages too), devices, accelerate's configuration and
the environment variables that matter (secrets masked)."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("mpltools", "torch", "accelerate", "safetensors", "webdataset", "numpy", "pillow", "typer", "rich")
# the extras' packages (trackers, plots, remote shard sets): "not installed" is worth knowing too
OPTIONAL = ("tensorboard", "wandb", "mlflow", "matplotlib", "scikit-learn", "fsspec")
ENV_PREFIXES = (
    "ACCELERATE_",
    "CUDA_",
    "NCCL_",
    "OMP_",
    "MKL_",
    "HF_",
    "HUGGING_FACE_",
    "WANDB_",
    "MLFLOW_",
    "PYTORCH_",
    "TORCH_",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "MASTER_",
)
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")  # such a variable's value is masked
MASK = "***"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _devices() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    gpus = []
    for i in range(torch.cuda.device_count() if cuda else 0):
        p = torch.cuda.get_device_properties(i)
        gpus.append(
            {"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}"}
        )
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "gpus": gpus,
        "mps_available": mps,
    }


def default_accelerate_config() -> Path:
    from accelerate.commands.config import default_config_file

    return Path(default_config_file)


def _accelerate_config(path: Path) -> dict:
    """The file `accelerate config` wrote (what `accelerate launch` uses when given no flags)."""
    if not path.is_file():
        return {"path": str(path), "found": False, "config": None}
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if path.suffix == ".json":
            import json

            config = json.loads(text)
        else:
            import yaml

            config = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - a broken config is itself worth reporting
        return {"path": str(path), "found": True, "config": None, "error": f"{type(exc).__name__}: {exc}"}
    return {"path": str(path), "found": True, "config": config}


def collect(accelerate_config: Path | None = None) -> dict:
    from mpltools import __version__

    versions = {"python": platform.python_version(), **{name: _version(name) for name in PACKAGES}}
    versions["mpltools"] = __version__  # the import name; the distribution may be named otherwise
    path = accelerate_config if accelerate_config is not None else default_accelerate_config()
    return {
        "versions": versions,
        "optional": {name: _version(name) for name in OPTIONAL},
        "platform": platform.platform(),
        "executable": sys.executable,
        "devices": _devices(),
        "accelerate_config": _accelerate_config(Path(path)),
        "environment": environment(os.environ),
    }


def environment(environ) -> dict[str, str]:
    """The variables that change what the toolkit does (accelerate, Hugging Face, trackers, threads), with the
    values of secrets (API keys, tokens, passwords) masked, so the report can be pasted anywhere."""
    shown = {}
    for name, value in sorted(environ.items()):
        if name.startswith(ENV_PREFIXES):
            shown[name] = MASK if value and any(word in name.upper() for word in SECRET_WORDS) else value
    return shown


def render(report: dict) -> str:
    v, d, acc = report["versions"], report["devices"], report["accelerate_config"]
    lines = [f"{name}: {v[name] or 'not installed'}" for name in ("python", *PACKAGES)]
    lines += [f"{name}: {version or 'not installed'} (optional)" for name, version in report["optional"].items()]
    lines += [
        f"platform: {report['platform']}",
        f"executable: {report['executable']}",
        f"cpus: {d['cpu_count']} (torch threads: {d['torch_threads']})",
        f"cuda: {'yes' if d['cuda_available'] else 'no'} (torch built for CUDA {d['cuda_version'] or 'none: a CPU build'})",
    ]
    lines += [f"gpu {g['index']}: {g['name']}, {g['memory_gib']} GiB, compute capability {g['capability']}" for g in d["gpus"]]
    lines.append(f"mps: {'yes' if d['mps_available'] else 'no'}")
    if not acc["found"]:
        lines.append(f"accelerate config: none at {acc['path']} (defaults: one process; `accelerate config` writes one)")
    elif acc["config"] is None:
        lines.append(f"accelerate config: {acc['path']} could not be read: {acc.get('error')}")
    else:
        lines.append(f"accelerate config: {acc['path']}")
        items = acc["config"].items() if isinstance(acc["config"], dict) else [("(value)", acc["config"])]
        lines += [f"  {k}: {val}" for k, val in items]
    lines += [f"env {k}={val}" for k, val in report["environment"].items()]
    return "\n".join(lines)
