"""A self-contained model folder from a run's global model and one site's specialized adapter; and its loader.

Layout written by :func:`export_model` (it loads in a fresh process, without FLARE or the run's folders)::

    MODEL/
      README.md                      model card: data, rounds, sites, metrics, privacy settings (epsilon under DP)
      fedmrg_model.json              format, FedMRG version, site, source, round, file list
      config.yaml                    the run configuration; decoder.path -> base_lm, encoder.path -> encoder
      base_lm/                       the base causal LM and its tokenizer (a `from_pretrained` directory, copied)
      encoder/                       the encoder's `from_pretrained` directory, when the configuration names one
      vision.safetensors             encoder (when trained), projector and diagnosis head, float32
      decoder_shared.safetensors     prompt-token rows, generic adapter G (and the decoder when it is trained)
      specialized.safetensors        the site's specialized adapter S2 (only with a site)
      adapters/generic/              G in PEFT format (adapter_config.json + adapter_model.safetensors)
      adapters/spec_local/           S2 in PEFT format (only with a site)

The safetensors files are what :func:`load_model` reads (strict key and shape checks); the PEFT folders are for
other tools (``PeftModel.from_pretrained(base_lm, "MODEL/adapters/generic")``; the embedding rows of the four
state tokens are not in them, they are in ``decoder_shared.safetensors`` as ``state_tokens.*``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from fedmrg import __version__
from fedmrg.errors import FedMRGError
from fedmrg.inference.sources import EXPORT_INFO, ModelSource, open_source
from fedmrg.report.checkpoint import LoadedRun

VISION_FILE = "vision.safetensors"
DECODER_FILE = "decoder_shared.safetensors"
PRIVATE_FILE = "specialized.safetensors"
_VISION_PREFIXES = ("encoder.", "projector.", "diagnosis_head.")


def load_model(
    path: str | Path,
    *,
    site: str | None = None,
    generic_only: bool = False,
    require_site: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> LoadedRun:
    """Build the model of any source :func:`~fedmrg.inference.sources.open_source` reads.

    Specialized adapter: none with ``generic_only`` (or a method without S); else ``site``'s; else the only one the
    source holds (an exported site model, a single-site run); else none (G alone, as at a new site).

    Args:
        site: the site whose S2 to load. When the source has none for it: FedMRGError with ``require_site``, else G
            alone (``fedmrg evaluate --site unseen-1``: a site that never trained).
        device: torch device of the returned model (in eval mode).
    """
    source = open_source(path, progress=progress)
    private_site = _pick_site(source, site=site, generic_only=generic_only, require_site=require_site)
    return build_model(source, private_site=private_site, device=device)


def _pick_site(source: ModelSource, *, site: str | None, generic_only: bool, require_site: bool) -> str | None:
    if generic_only:
        return None
    if site is not None:
        if site in source.sites:
            return site
        if require_site:
            source.private_state(site)  # raises, naming the sites that have one
        return None
    return source.sites[0] if len(source.sites) == 1 else None


def build_model(source: ModelSource, *, private_site: str | None, device: str | torch.device = "cpu") -> LoadedRun:
    """The model of ``source`` with its global shared state and ``private_site``'s S2 (None: G alone)."""
    from fedmrg.report.model import FedMRGModel
    from fedmrg.report.shared_state import load_private_state, load_shared_state, start_round

    config = source.config
    torch.manual_seed(config.training.seed)
    model = FedMRGModel(config.model)
    try:
        load_shared_state(model, source.shared_state())
    except ValueError as e:
        raise FedMRGError(f"{source.path}: the global model does not fit its configuration: {e}") from e
    if private_site is not None and model.has_specialized:
        try:
            load_private_state(model, source.private_state(private_site))
        except ValueError as e:
            raise FedMRGError(f"{source.private_files[private_site]}: {e}") from e
    else:
        private_site = None
    start_round(model)
    model.to(device)
    model.eval()
    return LoadedRun(model, config, "mixed" if private_site is not None else "generic", private_site)


def export_model(source: str | Path, *, site: str | None, out: str | Path, overwrite: bool = False) -> Path:
    """Write a self-contained model folder (layout in the module docstring) and return its path.

    Args:
        source: anything :func:`~fedmrg.inference.sources.open_source` reads (simulator workspace, its
            ``app_server`` folder or ``FL_global_model.safetensors``, a ``fedmrg train`` run folder, a demo's
            ``--out`` folder, an exported model).
        site: the training site whose specialized adapter to include; None: the generic adapter G alone.
        out: the folder to write; it must not exist (or be empty) unless ``overwrite``.

    Raises:
        FedMRGError: no model in ``source``, ``site`` has no specialized adapter there, or ``out`` is not empty.
    """
    from fedmrg.fl.state_files import replace_dir

    src = open_source(source)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FedMRGError(f"{out}: exists and is not empty; choose another folder or pass --overwrite")
    if site is not None:
        src.private_state(site)  # FedMRGError naming the sites with an adapter
    loaded = build_model(src, private_site=site)
    replace_dir(out, lambda tmp: _write(Path(tmp), src, loaded))
    return out


def _write(out: Path, src: ModelSource, loaded: LoadedRun) -> None:
    from safetensors.torch import save_file

    from fedmrg.report.adapters import GENERIC, SPEC_LOCAL
    from fedmrg.report.run_config import run_config_to_dict
    from fedmrg.report.shared_state import get_private_state, get_shared_state

    model, config = loaded.model, loaded.config
    data = run_config_to_dict(config)
    shutil.copytree(config.model.decoder.path, out / "base_lm")
    data["decoder"]["path"] = "base_lm"
    if config.model.encoder.path:
        shutil.copytree(config.model.encoder.path, out / "encoder")
        data["encoder"]["path"] = "encoder"
    (out / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    shared = get_shared_state(model)
    vision = {k: v for k, v in shared.items() if k.startswith(_VISION_PREFIXES)}
    save_file(vision, str(out / VISION_FILE))
    save_file({k: v for k, v in shared.items() if k not in vision}, str(out / DECODER_FILE))
    files = [VISION_FILE, DECODER_FILE]
    if loaded.private_site is not None:
        save_file(get_private_state(model), str(out / PRIVATE_FILE))

    from peft import PeftModel

    if isinstance(model.decoder, PeftModel):  # `method: full` has no adapter
        kwargs = {"save_embedding_layers": False}  # the state-token rows are in decoder_shared.safetensors
        model.decoder.save_pretrained(str(out / "adapters"), selected_adapters=[GENERIC], **kwargs)
        if loaded.private_site is not None:
            model.decoder.save_pretrained(str(out / "adapters"), selected_adapters=[SPEC_LOCAL], **kwargs)

    info = {
        "format": "fedmrg-model",
        "format_version": 1,
        "fedmrg_version": __version__,
        "method": config.model.method,
        "site": loaded.private_site,
        "source": str(Path(src.path).resolve()),
        "source_kind": src.kind,
        "round": src.round,
        "shared_files": files,
        "private_file": PRIVATE_FILE if loaded.private_site is not None else None,
        "sites_with_adapter": src.sites,
        "details": src.info,
    }
    (out / EXPORT_INFO).write_text(json.dumps(info, indent=2, default=float) + "\n", encoding="utf-8")
    (out / "README.md").write_text(model_card(info, config), encoding="utf-8")


# ------------------------------------------------------------------------------------------------ model card


def _privacy_lines(config: Any, details: dict[str, Any]) -> list[str]:
    dp = config.model.privacy.dp_sgd
    lines = []
    if dp.enabled:
        sigma = (
            f"noise multiplier {dp.noise_multiplier}" if dp.noise_multiplier else f"target epsilon {dp.target_epsilon}"
        )
        lines.append(f"- Patient-level DP-SGD (Opacus) in the run configuration: {sigma}, per-study clipping norm "
                     f"{dp.max_grad_norm}, delta {dp.delta}, budget {dp.max_epsilon}, accountant {dp.accountant}.")  # fmt: skip
    else:
        lines.append("- Patient-level DP-SGD in the run configuration: off (a site's fedmrg_site.json may turn it on).")
    eps = _epsilons(details)
    lines += [f"- {name}: epsilon {value:.4g}" for name, value in eps.items()]
    filters = details.get("privacy_filters") or []
    enabled_dp_filter = False
    for f in filters:
        args = f.get("args") or {}
        shown = ", ".join(f"{k} {v}" for k, v in args.items() if not isinstance(v, dict | list))
        lines.append(f"- Upload filter `{f['path']}`: {shown or 'no arguments'}.")
        enabled_dp_filter |= "dp" in f["path"].lower() and bool(args.get("enabled", True))
    if not filters:
        lines.append("- Upload filters: none.")
    if not dp.enabled and not eps and not enabled_dp_filter:
        lines.append("- No differential privacy was applied: the model carries no formal privacy guarantee.")
    return lines


def _epsilons(details: dict[str, Any]) -> dict[str, float]:
    """Epsilon values the run recorded, e.g. ``{"site-1 dp/epsilon": 3.1}`` (summary's ``privacy``; run metrics)."""
    out: dict[str, float] = {}
    for site, values in ((details.get("summary") or {}).get("privacy") or {}).items():
        for k, v in (values or {}).items():
            if "epsilon" in str(k) and isinstance(v, int | float):
                out[f"{site} {k}"] = float(v)
    for k, v in (details.get("metrics") or {}).items():
        if "epsilon" in str(k) and isinstance(v, int | float):
            out[k] = float(v)
    return out


def _metrics_lines(details: dict[str, Any]) -> list[str]:
    summary = details.get("summary") or {}
    lines = []
    cross = summary.get("cross_site") or {}
    if cross:
        lines += ["| site | model | " + " | ".join(("bleu4", "rouge_l", "ce_f1", "personalized_bleu4",
                                                    "personalized_ce_f1")) + " |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for site, models in sorted(cross.items()):
            for name, m in sorted(models.items()):
                vals = [m.get(k) for k in ("bleu4", "rouge_l", "ce_f1", "personalized_bleu4", "personalized_ce_f1")]
                lines.append(f"| {site} | {name} | " + " | ".join("" if v is None else f"{v:.4f}" for v in vals) + " |")
    elif details.get("metrics"):
        shown = {k: v for k, v in details["metrics"].items() if isinstance(v, int | float)}
        lines += [f"- {k}: {v:.4g}" for k, v in sorted(shown.items())]
    return lines or ["- none recorded"]


def model_card(info: dict[str, Any], config: Any) -> str:
    """The README.md of an exported model (Markdown)."""
    m, t = config.model, config.training
    details = info.get("details") or {}
    summary = details.get("summary") or {}
    site = info.get("site")
    rounds = summary.get("rounds") or []
    n_rounds = len(rounds) if rounds else details.get("rounds")
    usage = "personalized: generic adapter G mixed with this site's specialized adapter S (alpha " + \
        f"{m.alpha_mix})" if site else "generic adapter G alone (for a site that did not train)"  # fmt: skip
    lines = [
        f"# FedMRG report model{f' for {site}' if site else ' (generic)'}",
        "",
        "Draft chest-radiograph reports and 14 CheXpert-style observation states (blank / positive / negative / "
        "uncertain) from one frontal image. A research model: every report needs a radiologist's review.",
        "",
        "## Use",
        "",
        "```",
        "fedmrg generate --model THIS_FOLDER image.png study.dcm",
        "fedmrg evaluate --model THIS_FOLDER --data DATASET --split test",
        "fedmrg serve --model THIS_FOLDER",
        "```",
        "",
        f"Default adapter: {usage}; `--generic-only` uses G alone.",
        "",
        "## Model",
        "",
        f"- Method `{m.method}`, decoder mode `{m.decoder.mode}`; base LM in `base_lm/` (copied from "
        f"`{config.builtin.get('decoder.path', m.decoder.path)}`); encoder "
        f"{'in `encoder/`' if m.encoder.path else f'preset `{m.encoder.preset}`'}, input {m.encoder.image_size} px.",
        f"- Adapters (method `{m.method}`): r {m.adapter.r}, alpha {m.adapter.alpha}, on "
        f"{', '.join(m.adapter.target_modules)}; generation: beams {m.generation.num_beams}, at most "
        f"{m.generation.max_new_tokens} new tokens.",
        f"- FedMRG {info.get('fedmrg_version')}; exported from {info.get('source_kind')} `{info.get('source')}`.",
        "",
        "## Training",
        "",
        f"- Rounds: {n_rounds if n_rounds is not None else 'not recorded'}; global model of round "
        f"{info.get('round') if info.get('round') is not None else 'not recorded'}.",
        f"- Sites with a specialized adapter: {', '.join(info.get('sites_with_adapter') or []) or 'none'}"
        f"{f'; this folder holds {site}' if site else ''}.",
        f"- Local training: batch {t.batch_size}, learning rate {t.learning_rate}, seed {t.seed}.",
    ]
    if rounds:
        accepted = sorted({s for r in rounds for s, v in (r.get("sites") or {}).items() if v.get("accepted")})
        lines.append(f"- Sites aggregated: {', '.join(accepted) or 'not recorded'}.")
    data = details.get("data")
    lines += [f"- Data: {data or 'each site its own local data (not recorded in the model)'}.", ""]
    lines += ["## Metrics (as recorded by the run)", "", *_metrics_lines(details), ""]
    lines += ["## Privacy", "", *_privacy_lines(config, details), ""]
    return "\n".join(lines)
