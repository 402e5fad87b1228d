"""Mixed precision: which autocast dtype ``training.mixed_precision`` gives on CPU and CUDA, the CPU bf16 probe, and
the autocast context the loop enters (bf16 training itself: ``tests/report/test_trainer.py``)."""

from __future__ import annotations

import pytest
import torch

from fedmrg.errors import FedMRGError
from fedmrg.training import precision
from fedmrg.training.precision import autocast, autocast_dtype, cpu_has_native_bf16, resolve_device

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert autocast_dtype("auto", CPU) == (torch.bfloat16 if native else None)


def test_explicit_settings(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert autocast_dtype("no", CPU) is None
    assert autocast_dtype("bf16", CPU) == torch.bfloat16  # asked for explicitly: emulated if need be
    assert autocast_dtype("fp16", CUDA) == torch.float16
    with pytest.raises(FedMRGError, match="fp16.*not supported on cpu"):
        autocast_dtype("fp16", CPU)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "native"),
    [(True, False, True), (False, True, True), (False, False, False), (None, None, False)],
)
def test_cpu_probe_follows_torch_feature_probes(monkeypatch, avx512_bf16, amx, native):
    """Either hardware feature means native bf16; neither, or a torch without the probes (None), means emulated."""
    for name, value in (("_is_avx512_bf16_supported", avx512_bf16), ("_is_amx_tile_supported", amx)):
        if value is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda v=value: v)
    assert cpu_has_native_bf16() is native


def test_autocast_context_casts_matmuls_only_when_asked():
    a, b = torch.randn(4, 8), torch.randn(8, 2)
    with autocast(CPU, torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(CPU, None):
        assert (a @ b).dtype == torch.float32


def test_device_names_are_checked(monkeypatch):
    assert resolve_device("cpu") == CPU
    with pytest.raises(FedMRGError, match="`training.device`"):
        resolve_device("gpu:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    with pytest.raises(FedMRGError, match="no CUDA GPU is available"):
        resolve_device("cuda:0")
