"""Run folders: what ``fedmrg train`` writes and ``fedmrg evaluate`` / ``fedmrg generate`` read.

Layout::

    RUN/
      config.yaml                        the run configuration (built-in model paths kept as ``builtin``)
      shared_state.safetensors           shared keys (encoder, projector, head, state tokens, G [, decoder]) float32
      private/<site>.safetensors         each site's private specialized adapter S2, float32 (FedMRG with S)
      peft/generic/                      G in PEFT format (adapter_config.json + adapter_model.safetensors)
      peft/<site>/spec_local/            S2 in PEFT format
      checkpoint.json                    format version, site list, shared / private keys and sizes, metrics

The safetensors files are the source of truth (strict key and shape checks on load). The PEFT folders are exports
for other tools: ``PeftModel.from_pretrained(base_lm, "RUN/peft/generic")`` loads G onto the base decoder (LoRA and
VeRA baselines too). S1 is not stored: at load time it is G (the copy every round starts from).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from fedmrg import __version__
from fedmrg.errors import FedMRGError
from fedmrg.report.adapters import GENERIC, SPEC_LOCAL
from fedmrg.report.model import FedMRGModel
from fedmrg.report.run_config import RunConfig, load_run_config, run_config_to_dict
from fedmrg.report.shared_state import load_private_state, load_shared_state, start_round, state_nbytes

CONFIG_FILE = "config.yaml"
SHARED_FILE = "shared_state.safetensors"
PRIVATE_DIR = "private"
PEFT_DIR = "peft"
INFO_FILE = "checkpoint.json"
FORMAT_VERSION = 1


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".partial")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)  # a reader never sees a half-written file


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise FedMRGError(f"{path}: not a readable safetensors file: {e}") from e


def save_checkpoint(
    run_dir: str | Path,
    model: FedMRGModel,
    config: RunConfig,
    *,
    shared_state: Mapping[str, torch.Tensor],
    private_states: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write (or update) a run folder; ``model`` must hold ``shared_state`` (used for the PEFT exports).

    Args:
        run_dir: the folder (created).
        model: the trained model, for the PEFT export of its adapters.
        config: the run configuration.
        shared_state: :func:`~fedmrg.report.shared_state.get_shared_state` of the model.
        private_states: site -> its private state; merged with the sites already in the folder.
        metrics: anything JSON-serialisable to record in ``checkpoint.json``.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / CONFIG_FILE).write_text(yaml.safe_dump(run_config_to_dict(config), sort_keys=False), encoding="utf-8")
    _save_tensors(shared_state, run / SHARED_FILE)
    for site, state in (private_states or {}).items():
        if state:
            (run / PRIVATE_DIR).mkdir(exist_ok=True)
            _save_tensors(state, run / PRIVATE_DIR / f"{site}.safetensors")
    _export_peft(run, model, sites_with_private=[s for s, st in (private_states or {}).items() if st])
    sites = list_private_sites(run)
    info = {
        "format_version": FORMAT_VERSION,
        "fedmrg_version": __version__,
        "method": config.model.method,
        "shared_keys": len(shared_state),
        "shared_bytes_float32": state_nbytes(shared_state),
        "private_sites": sites,
        "metrics": dict(metrics or {}),
    }
    (run / INFO_FILE).write_text(json.dumps(info, indent=2, default=float) + "\n", encoding="utf-8")
    return run


def _export_peft(run: Path, model: FedMRGModel, *, sites_with_private: list[str]) -> None:
    from peft import PeftModel

    if not isinstance(model.decoder, PeftModel):
        return  # `method: full` has no adapter (the decoder is in the shared state)
    # PEFT writes a non-default adapter into <dir>/<adapter name>/, hence the parent folders below. The embedding
    # matrix is left out: it is frozen (the prompt-token rows travel in the shared state, `state_tokens.*`),
    # and PEFT would otherwise save the whole resized matrix next to every adapter.
    kwargs = {"save_embedding_layers": False}
    model.decoder.save_pretrained(str(run / PEFT_DIR), selected_adapters=[GENERIC], **kwargs)
    if model.has_specialized:
        for site in sites_with_private:
            model.decoder.save_pretrained(str(run / PEFT_DIR / site), selected_adapters=[SPEC_LOCAL], **kwargs)


def list_private_sites(run_dir: str | Path) -> list[str]:
    """Sites whose private state is stored in the run folder, sorted."""
    folder = Path(run_dir) / PRIVATE_DIR
    return sorted(p.name.removesuffix(".safetensors") for p in folder.glob("*.safetensors")) if folder.is_dir() else []


@dataclass
class LoadedRun:
    """A model restored from a run folder.

    Attributes:
        model: the model, shared state loaded, S1 = G, S2 of ``private_site`` when one was loaded.
        config: the run configuration.
        adapter: ``"generic"`` (G alone) or ``"mixed"`` (alpha-mix of G and the site's S, paper eq. 6).
        private_site: the site whose S2 was loaded, or None.
    """

    model: FedMRGModel
    config: RunConfig
    adapter: Literal["generic", "mixed"]
    private_site: str | None


def load_run(
    run_dir: str | Path,
    *,
    site: str | None = None,
    generic_only: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> LoadedRun:
    """Rebuild the model of a run folder and load its states.

    Which specialized adapter: none with ``generic_only`` (or a method without S); else ``site``'s when stored;
    else the only stored one (a centralized or single-site run); else none (G alone, as at a new site).

    Raises:
        FedMRGError: the folder is not a run folder, or its files do not match its configuration.
    """
    run = Path(run_dir)
    for name in (CONFIG_FILE, SHARED_FILE):
        if not (run / name).is_file():
            raise FedMRGError(f"{run}: not a FedMRG run folder ({name} missing); train one with `fedmrg train`")
    config = load_run_config(run / CONFIG_FILE, progress=progress)
    torch.manual_seed(config.training.seed)
    model = FedMRGModel(config.model)
    try:
        load_shared_state(model, _load_tensors(run / SHARED_FILE))
    except ValueError as e:
        raise FedMRGError(f"{run / SHARED_FILE}: {e}") from e
    private_site = None
    if model.has_specialized and not generic_only:
        sites = list_private_sites(run)
        if site is not None and site in sites:
            private_site = site
        elif len(sites) == 1:
            private_site = sites[0]
    if private_site is not None:
        path = run / PRIVATE_DIR / f"{private_site}.safetensors"
        try:
            load_private_state(model, _load_tensors(path))
        except ValueError as e:
            raise FedMRGError(f"{path}: {e}") from e
    start_round(model)
    model.to(device)
    model.eval()
    return LoadedRun(model, config, "mixed" if private_site is not None else "generic", private_site)
