"""Parameter counts and sizes of a FedMRG model: frozen, trainable, shared (travels each round), private (stays).

With ``meta=True`` the model is built on PyTorch's meta device from the decoder's ``config.json`` alone (no weights
are read or allocated), so a Llama-2-7B-shaped decoder with a ResNet-101 encoder is counted in seconds on a laptop.
The decoder's architecture comes from ``decoder.path`` when that directory holds a ``config.json``, else from a
``decoder_shape``: a packaged architecture name (:data:`DECODER_SHAPES`) or a directory with a ``config.json``.

Categories (each a parameter count and bytes at the parameters' dtype):

- ``total``: every parameter of the model (encoder, projector, head, state tokens, decoder, all adapters);
- ``trainable``: parameters that train in some phase (G step or S step); ``frozen`` = total - trainable (the base LLM
  in LLM mode and the frozen copy S1);
- ``shared``: the parameters among :func:`~fedmrg.report.shared_state.shared_keys` (uploaded by every site each
  round); ``shared_buffers`` adds the float buffers that also travel (BatchNorm running statistics);
- ``private``: the specialized adapter S2 (never leaves the site).

``payload_bytes_float32`` is what one upload weighs on the wire (shared parameters and buffers as float32).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fedmrg.errors import ConfigError
from fedmrg.observations import STATE_TOKENS
from fedmrg.report.config import FedMRGConfig
from fedmrg.report.decoder import _DTYPES, LoadedDecoder, resolve_mode
from fedmrg.report.model import FedMRGModel
from fedmrg.report.shared_state import _private_tensors, _shared_tensors

#: The paper's communicated parameters per round for FedMRG with Llama-2-7B + ResNet-101 (Tables 1-3, "Comm.").
PAPER_SHARED_PARAMS = 59_000_000

#: The paper's "Comm." column per method (Table 1; Llama-2-7B + ResNet-101), in parameters. ``full`` has none.
PAPER_COMM: dict[str, int] = {
    "fedmrg": 59_000_000,
    "fedlora": 59_000_000,
    "fedprompt": 102_000_000,
    "fedprefix": 103_000_000,
    "fedvera": 51_000_000,
    "fedadalora": 57_000_000,
    "fedpara": 76_000_000,
    "promptmrg": 59_000_000,
}


def shapes_dir() -> Path:
    """Folder of the packaged decoder architectures (``configs/shapes/<name>/config.json``)."""
    from importlib import resources

    return Path(str(resources.files("fedmrg.report").joinpath("configs", "shapes")))


DECODER_SHAPES: tuple[str, ...] = ("llama-2-7b",)


def _shape_dir(decoder_path: str, decoder_shape: str | Path | None) -> Path:
    if decoder_shape is None:
        path = Path(decoder_path)
        if (path / "config.json").is_file():
            return path
        raise ConfigError(
            f"`decoder.path` {decoder_path} has no config.json; to count parameters without the model, pass a "
            f"decoder shape: one of {list(DECODER_SHAPES)} or a directory holding the model's config.json "
            "(CLI: --decoder-shape)"
        )
    named = shapes_dir() / str(decoder_shape)
    if str(decoder_shape) in DECODER_SHAPES and (named / "config.json").is_file():
        return named
    path = Path(decoder_shape)
    if (path / "config.json").is_file():
        return path
    raise ConfigError(
        f"decoder shape {str(decoder_shape)!r} is neither a packaged shape {list(DECODER_SHAPES)} nor a directory "
        "with a config.json"
    )


def meta_decoder(config: FedMRGConfig, decoder_shape: str | Path | None = None) -> LoadedDecoder:
    """The decoder of ``config`` built on the meta device from its ``config.json`` (no weights, no tokenizer).

    The four diagnosis tokens are counted as four new vocabulary rows (what :func:`~fedmrg.report.decoder.
    load_decoder` adds for a tokenizer that lacks them).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    source = _shape_dir(config.decoder.path, decoder_shape)
    try:
        hf_config = AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{source}/config.json: not a Hugging Face model configuration: {e}") from e
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(hf_config, dtype=_DTYPES[config.decoder.dtype])
    num_parameters = sum(p.numel() for p in lm.parameters())
    vocab = lm.get_input_embeddings().num_embeddings
    lm.resize_token_embeddings(vocab + len(STATE_TOKENS), mean_resizing=False)
    bos = hf_config.bos_token_id if hf_config.bos_token_id is not None else hf_config.eos_token_id
    return LoadedDecoder(
        model=lm,
        tokenizer=None,  # type: ignore[arg-type]
        mode=resolve_mode(config.decoder.mode, num_parameters),
        num_parameters=num_parameters,
        bos_token_id=int(bos or 0),
        state_token_ids=list(range(vocab, vocab + len(STATE_TOKENS))),
    )


def build_meta_model(config: FedMRGConfig, decoder_shape: str | Path | None = None) -> FedMRGModel:
    """The whole FedMRG model on the meta device (encoder from its preset; a local ``encoder.path`` is read for its
    ``config.json`` only)."""
    if config.encoder.path is not None:
        config = replace(config, encoder=replace(config.encoder, path=None, preset=_preset_like(config.encoder.path)))
    decoder = meta_decoder(config, decoder_shape)
    with torch.device("meta"):
        return FedMRGModel(config, decoder=decoder)


def _preset_like(encoder_path: str) -> str:
    """The packaged preset with the same architecture as the ResNet in ``encoder_path`` (meta counting only)."""
    from fedmrg.report.encoder import ENCODER_PRESETS

    try:
        cfg = json.loads((Path(encoder_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"`encoder.path`: cannot read {encoder_path}/config.json: {e}") from e
    for name, preset in ENCODER_PRESETS.items():
        if all(cfg.get(k) == v for k, v in preset.items()):
            return name
    raise ConfigError(
        f"`encoder.path` {encoder_path}: its ResNet layout matches none of the presets {list(ENCODER_PRESETS)}; "
        "count it without --meta"
    )


def _numel_bytes(tensors: Any) -> tuple[int, int]:
    tensors = list(tensors)
    return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)


def count_parameters(model: FedMRGModel) -> dict[str, Any]:
    """Parameter counts and bytes per category (module docstring) plus a per-role breakdown and ratios."""
    params = dict(model.named_parameters())
    ids_trainable = {id(p) for p in model.trainable_parameters()}
    shared = _shared_tensors(model)
    shared_params = [t for t in shared.values() if isinstance(t, torch.nn.Parameter)]
    shared_buffers = [t for t in shared.values() if not isinstance(t, torch.nn.Parameter)]
    groups = {
        "total": params.values(),
        "trainable": [p for p in params.values() if id(p) in ids_trainable],
        "frozen": [p for p in params.values() if id(p) not in ids_trainable],
        "shared": shared_params,
        "shared_buffers": shared_buffers,
        "private": _private_tensors(model).values(),
    }
    out: dict[str, Any] = {}
    for name, tensors in groups.items():
        n, b = _numel_bytes(tensors)
        out[name] = {"parameters": n, "bytes": b}
    roles: Counter[str] = Counter()
    for name, p in params.items():
        roles[model.role_of(name)] += p.numel()
    total = out["total"]["parameters"]
    out["by_role"] = dict(sorted(roles.items()))
    out["payload_bytes_float32"] = 4 * (out["shared"]["parameters"] + out["shared_buffers"]["parameters"])
    out["shared_share_of_total"] = out["shared"]["parameters"] / total if total else 0.0
    out["trainable_share_of_total"] = out["trainable"]["parameters"] / total if total else 0.0
    out["decoder_mode"] = model.decoder_mode
    out["method"] = model.config.method
    return out


def format_counts(counts: dict[str, Any], *, paper_shared: int | None = PAPER_SHARED_PARAMS) -> str:
    """A human-readable table of :func:`count_parameters`."""

    def size(b: int) -> str:
        for unit in ("B", "KiB", "MiB", "GiB"):
            if b < 1024 or unit == "GiB":
                return f"{b:.1f} {unit}" if unit != "B" else f"{b} B"
            b /= 1024
        return ""

    lines = [f"method {counts['method']}, decoder mode {counts['decoder_mode']}", ""]
    lines.append(f"{'category':<16}{'parameters':>16}{'millions':>11}{'bytes':>14}")
    for name in ("total", "frozen", "trainable", "shared", "shared_buffers", "private"):
        c = counts[name]
        lines.append(f"{name:<16}{c['parameters']:>16,}{c['parameters'] / 1e6:>11.2f}{size(c['bytes']):>14}")
    lines += ["", "by role:"]
    lines += [f"  {role:<16}{n:>16,}" for role, n in counts["by_role"].items()]
    lines += [
        "",
        f"shared share of the whole model: {counts['shared_share_of_total']:.3%}",
        f"upload per round (float32 on the wire): {size(counts['payload_bytes_float32'])}",
    ]
    if paper_shared:
        s = counts["shared"]["parameters"]
        lines.append(
            f"shared parameters vs the paper's {paper_shared / 1e6:.0f}M: {s / 1e6:.2f}M ({s / paper_shared:.3f}x)"
        )
    return "\n".join(lines)


def with_method(config: FedMRGConfig, method: str) -> FedMRGConfig:
    """``config`` with another ``method`` (ablations cleared for a baseline; ``full`` gets ``decoder.mode: auto``,
    since it trains the whole decoder)."""
    from fedmrg.report.config import METHODS, AblationConfig

    if method not in METHODS:
        raise ConfigError(f"--method must be one of {list(METHODS)} or 'all', got {method!r}")
    ablations = config.ablations if method == "fedmrg" else AblationConfig()
    decoder = replace(config.decoder, mode="auto") if method == "full" else config.decoder
    return replace(config, method=method, ablations=ablations, decoder=decoder)  # type: ignore[arg-type]


def comm_table(config: FedMRGConfig, decoder_shape: str | Path | None, methods: list[str]) -> list[dict[str, Any]]:
    """Per method: shared (communicated) parameters of the meta-built model, upload bytes (float32) and the paper's
    Comm. value with the ratio ours / paper (None where the paper gives none)."""
    rows = []
    for method in methods:
        counts = count_parameters(build_meta_model(with_method(config, method), decoder_shape))
        shared = counts["shared"]["parameters"]
        paper = PAPER_COMM.get(method)
        rows.append(
            {
                "method": method,
                "shared_parameters": shared,
                "payload_bytes_float32": counts["payload_bytes_float32"],
                "paper_parameters": paper,
                "ratio_to_paper": shared / paper if paper else None,
            }
        )
    return rows


def format_comm_table(rows: list[dict[str, Any]]) -> str:
    """The Comm. column beside the paper's, one line per method."""
    lines = [f"{'method':<12}{'shared (M)':>12}{'paper (M)':>11}{'ratio':>8}{'upload MiB':>12}"]
    for r in rows:
        paper = f"{r['paper_parameters'] / 1e6:.0f}" if r["paper_parameters"] else "-"
        ratio = f"{r['ratio_to_paper']:.3f}" if r["ratio_to_paper"] else "-"
        lines.append(
            f"{r['method']:<12}{r['shared_parameters'] / 1e6:>12.2f}{paper:>11}{ratio:>8}"
            f"{r['payload_bytes_float32'] / 2**20:>12.1f}"
        )
    return "\n".join(lines)
