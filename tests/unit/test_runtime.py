"""Runtime decisions that GPU runs depend on, checked on the CPU."""

from __future__ import annotations

import torch

from mpltools import runtime as rt
from mpltools.errors import MplError


def test_auto_mixed_precision_is_fp32_on_cpu_and_bf16_is_honoured():
    cpu = torch.device("cpu")
    assert rt.resolve_mixed_precision("auto", cpu) == "no"
    assert rt.resolve_mixed_precision("bf16", cpu) == "bf16"
    assert rt.resolve_mixed_precision("no", cpu) == "no"


def test_bf16_autocast_context_casts_matmuls():
    runtime = rt.Runtime(None, torch.device("cpu"), 0, 1, True, "bf16", None)
    with runtime.autocast():
        y = torch.nn.Linear(4, 3)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    runtime.mixed_precision = "no"
    with runtime.autocast():
        assert torch.nn.Linear(4, 3)(torch.randn(2, 4)).dtype == torch.float32


def test_unsynchronised_world_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    try:
        rt.start()
    except MplError as exc:
        assert "unsynchronised" in exc.message and "accelerate launch" in exc.message
    else:
        raise AssertionError("expected a refusal")
