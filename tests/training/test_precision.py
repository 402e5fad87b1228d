"""Mixed precision: which autocast dtype ``training.mixed_precision`` gives on CPU and CUDA, and that bf16 trains."""

from __future__ import annotations

import pytest
import torch

from fedmrg.errors import FedMRGError
from fedmrg.report import precision
from fedmrg.report.precision import autocast_dtype

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


def test_cpu_probe_answers_a_bool():
    assert isinstance(precision.cpu_has_native_bf16(), bool)
