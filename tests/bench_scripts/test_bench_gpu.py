"""scripts/bench_gpu.py on the CPU (``--tiny``), and the S step under gradient checkpointing that it measures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fedmrg.report.steps import generic_step_losses, specialized_step_losses
from fedmrg.report.tokenization import ReportCollator

SCRIPT = Path(__file__).parents[2] / "scripts" / "bench_gpu.py"
_spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
bench_gpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_gpu)  # type: ignore[union-attr]


def _grads(model, batch, *, checkpointing: bool) -> dict[str, torch.Tensor]:
    """Gradients of one G step and one S step (each its own backward), keyed ``g:`` / ``s:`` + parameter name."""
    if checkpointing:
        model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.lm.gradient_checkpointing_disable()
    model.train()
    out: dict[str, torch.Tensor] = {}
    torch.manual_seed(1)
    g = generic_step_losses(model, batch)
    g.total.backward()
    out |= {f"g:{n}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)
    s = specialized_step_losses(model, batch, encoded=g.encoded)
    s.total.backward()
    out |= {f"s:{n}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.set_phase("generic")
    return out


def test_checkpointing_gives_the_same_gradients_in_both_steps(tmp_path: Path) -> None:
    """The S step's backward recomputes its forward with S1 + S2 (not the G adapter its teacher pass ran last)."""
    model, _, data = bench_gpu.build_report_model(True, torch.device("cpu"), tmp_path)
    model.float()
    batch = ReportCollator(model.tokenizer, max_report_tokens=model.config.decoder.max_report_tokens)(data[:2])
    plain = _grads(model, batch, checkpointing=False)
    ckpt = _grads(model, batch, checkpointing=True)
    assert any(k.startswith("s:") and "lora" in k for k in plain), "the S step trained no adapter"
    assert plain.keys() == ckpt.keys()
    for key in plain:
        torch.testing.assert_close(ckpt[key], plain[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.slow
def test_tiny_run_writes_both_parts(tmp_path: Path) -> None:
    code = bench_gpu.main(["--tiny", "--out", str(tmp_path), "--steps", "1", "--repeats", "1",
                           "--vision-rounds", "1", "--vision-steps", "1"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert code == 0, results
    report = results["report"]
    for setting in ("off", "on"):
        row = report["settings"][setting]
        assert row["decoder_forwards_per_step"] == 4  # G student + teacher, S student + teacher
        b, seq = row["decoder_sequence"]
        assert b == report["batch_size"] and row["tokens_per_step"] == b * seq
        # a step time from the difference of two timings: positive, or None when CPU noise exceeded the step
        assert row["seconds_per_step"] is None or row["seconds_per_step"] > 0
        assert all(t > 0 for t in row["round_1_step_s"])
    # the measured FLOPs are dominated by the decoder's 12 N T (tiny decoder: encoder and attention are larger shares)
    ratio = report["flops_per_step_measured"] / report["flops_per_step_estimate_12NT"]
    assert 0.5 < ratio < 3, ratio
    vision = results["vision"]
    assert vision["local_steps"] == 1 and vision["seconds_per_round"] > 0
    assert 0 < vision["trained_share"] < 1
