"""``fedmrg train``, ``fedmrg evaluate``, ``fedmrg generate`` and ``fedmrg inspect-model``.

Heavy libraries (torch, transformers, monai) are imported inside the command functions so ``fedmrg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "default.yaml"
_THREADS_HELP = (
    "CPU threads for torch (default: torch's choice, one per core); 1 is much faster on a CPU shared with other busy "
    "processes, where spinning threads of several processes slow each other down"
)

_RERANK_HELP = (
    "sample K more reports per study and keep the one that agrees best with the diagnosis head (0: the greedy / beam "
    "report alone; default: generation.rerank_samples; needs diagnosis prompts)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    p = subparsers.add_parser(
        "train",
        help="train the report model on one site's data or on all sites pooled",
        description="Train FedMRG locally: `--site NAME` trains on one site's train split (round by round, as that "
        "site would in a federation, without the others); `--centralized` pools every site's train split (the "
        "paper's centralized reference). Writes a run folder (config, safetensors states, PEFT adapters, metrics, "
        "TensorBoard events).",
        formatter_class=fmt,
    )
    p.add_argument("--config", type=Path, help=f"run configuration YAML (default: the packaged {DEFAULT_CONFIG})")
    p.add_argument("--data", type=Path, required=True, help="federated dataset directory (fedmrg data prepare)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--site", help="train on this site's train split")
    where.add_argument("--centralized", action="store_true", help="train on every site's train split pooled")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--rounds", type=int, help="rounds (default: training.rounds)")
    p.add_argument("--steps", type=int, help="optimizer steps per round (default: training.local_steps / epochs)")
    p.add_argument("--epochs", type=float, help="passes over the data per round (default: training.local_epochs)")
    p.add_argument("--device", help="torch device (default: training.device)")
    p.add_argument("--seed", type=int, help="seed (default: training.seed)")
    p.add_argument("--threads", type=int, help=_THREADS_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "evaluate",
        help="generate reports for a split and score them (BLEU, ROUGE-L, CIDEr, clinical efficacy)",
        description="Generate a report for every study of a split, score them with `fedmrg.metrics` and compare "
        "with the most-frequent-training-report baseline. Writes metrics JSON and predictions JSONL.",
        formatter_class=fmt,
    )
    _model_arguments(p)
    p.add_argument("--data", type=Path, required=True, help="federated dataset directory")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split (default test)")
    p.add_argument(
        "--site",
        help="a training site (its train/val split, and its specialized adapter when the run has one) or an unseen "
        "site (its test split); default: the in-domain test set, or every site's train/val split",
    )
    p.add_argument("--generic-only", action="store_true", help="use the generic adapter G alone (a new site)")
    p.add_argument("--out", type=Path, help="output folder (default: RUN/eval/<site or all>-<split>)")
    p.add_argument("--limit", type=int, help="evaluate only the first N studies")
    p.add_argument(
        "--oracle-states",
        action="store_true",
        help="prompt with the ground-truth diagnosis states instead of the diagnosis head's (decoder upper bound)",
    )
    p.add_argument("--num-beams", type=int, help="beam width (default: generation.num_beams)")
    p.add_argument("--rerank-samples", type=_count, metavar="K", help=_RERANK_HELP)
    p.add_argument("--batch-size", type=int, help="studies per generation batch (default: training.eval_batch_size)")
    p.add_argument("--device", default="auto", help="torch device (default auto)")
    p.add_argument("--threads", type=int, help=_THREADS_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser(
        "generate",
        help="write the report and the 14 diagnosis states for images (PNG / JPG / DICOM)",
        formatter_class=fmt,
    )
    _model_arguments(p)
    p.add_argument("--site", help="use this site's specialized adapter (default: the model's only one, else G)")
    p.add_argument("--generic-only", action="store_true", help="use the generic adapter G alone")
    p.add_argument("--num-beams", type=int, help="beam width (default: generation.num_beams)")
    p.add_argument("--rerank-samples", type=_count, metavar="K", help=_RERANK_HELP)
    p.add_argument("--device", default="auto", help="torch device (default auto)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image instead of text")
    p.add_argument("--csv", type=Path, metavar="FILE", help="also write a CSV table, one row per image")
    p.add_argument("--sr", type=Path, metavar="DIR", help="also write a DICOM Basic Text SR per image into DIR "
                   "(<image name>.sr.dcm; a DICOM image's study and patient are copied into it)")  # fmt: skip
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (PNG, JPEG, BMP, DICOM)")
    p.set_defaults(func=run_generate)

    p = subparsers.add_parser(
        "export",
        help="write a self-contained model folder from a run (global model + one site's specialized adapter)",
        description="Export the model of SOURCE (a simulator workspace, its server/simulate_job/app_server folder, "
        "FL_global_model.safetensors, a `fedmrg train` run folder or a `fedmrg demo --out` folder) into a folder "
        "that `fedmrg generate / evaluate / serve --model` and a fresh Python process load without FLARE: encoder, "
        "projector and diagnosis head (safetensors), base LM and tokenizer (from_pretrained folder), generic and "
        "specialized adapters (PEFT), run configuration and a model card (README.md).",
        formatter_class=fmt,
    )
    p.add_argument("source", type=Path, help="the run output to export")
    p.add_argument("--site", help="include this training site's specialized adapter (default: generic only)")
    p.add_argument("--out", type=Path, required=True, help="model folder to write (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=run_export)

    p = subparsers.add_parser(
        "inspect-model",
        help="parameter counts and bytes: frozen, trainable, shared (travels), private (stays)",
        description="Count the model's parameters by category. With --meta nothing is loaded: the model is built "
        "on the meta device from the decoder's config.json (or --decoder-shape), e.g. `fedmrg inspect-model "
        "--config llama2-7b.yaml --meta --decoder-shape llama-2-7b` for Llama-2-7B + ResNet-101.",
        formatter_class=fmt,
    )
    p.add_argument(
        "--config",
        default=None,
        help=f"run configuration YAML, or the name of a packaged one (default.yaml, llama2-7b.yaml; default "
        f"{DEFAULT_CONFIG})",
    )
    p.add_argument("--meta", action="store_true", help="build on the meta device (no weights read)")
    p.add_argument("--decoder-shape", help="with --meta: a packaged decoder architecture (llama-2-7b) or a folder "
                   "with a config.json, used when decoder.path does not exist")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--method", help="count this method instead of the config's; 'all': the shared (communicated) "
                   "parameters of every method beside the paper's Comm. column (with --meta)")  # fmt: skip
    p.set_defaults(func=run_inspect_model)


# ---------------------------------------------------------------------------------------------------- helpers


def _model_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, help="an exported model (fedmrg export), a `fedmrg train` run folder, "
                       "a simulator workspace (or its app_server folder or FL_global_model.safetensors) or a "
                       "`fedmrg demo --out` folder")  # fmt: skip
    which.add_argument("--checkpoint", type=Path, dest="model", help="the same as --model")


def _config_path(value: str | Path | None) -> Path:
    from fedmrg.report.run_config import packaged_config

    if value is None:
        return packaged_config(DEFAULT_CONFIG)
    path = Path(value)
    if path.is_file() or path.parent != Path("."):
        return path
    return packaged_config(str(value))  # a bare name such as "llama2-7b.yaml"


def _count(value: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {n}")
    return n


def _generation_kwargs(args: argparse.Namespace, loaded: Any) -> dict[str, int]:
    """``model.generate`` overrides from ``--num-beams`` / ``--rerank-samples``; reranking needs diagnosis prompts."""
    from fedmrg.errors import ConfigError

    kwargs = {"num_beams": args.num_beams} if args.num_beams else {}
    if args.rerank_samples is not None:
        if args.rerank_samples and not loaded.config.model.uses_prompts:
            raise ConfigError(f"--rerank-samples {args.rerank_samples}: `method: {loaded.config.model.method}` has no "
                              "diagnosis prompt to rerank against; leave --rerank-samples out")  # fmt: skip
        kwargs["rerank_samples"] = args.rerank_samples
    return kwargs


def _say(msg: str) -> None:
    print(f"[fedmrg] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------- train


def run_train(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from fedmrg.data.dataset_dir import FederatedDataset
    from fedmrg.report.checkpoint import save_checkpoint
    from fedmrg.report.data_loading import open_split
    from fedmrg.report.model import FedMRGModel
    from fedmrg.report.run_config import load_run_config
    from fedmrg.report.shared_state import get_private_state, get_shared_state
    from fedmrg.report.trainer import LocalTrainer, evaluate_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_run_config(_config_path(args.config), progress=not args.no_progress)
    overrides = {k: v for k, v in (("rounds", args.rounds), ("device", args.device), ("seed", args.seed)) if v}
    if overrides:
        config.training = dataclasses.replace(config.training, **overrides)
    t, m = config.training, config.model
    data = FederatedDataset.open(args.data)
    site = None if args.centralized else args.site
    name = "centralized" if args.centralized else args.site
    views = m.uses_contrastive and t.augment
    train = open_split(data, site=site, split="train", image_size=m.encoder.image_size, views=views, seed=t.seed,
                       cache_images=t.cache_images)  # fmt: skip
    val = open_split(data, site=site, split="val", image_size=m.encoder.image_size, cache_images=t.cache_images)
    torch.manual_seed(t.seed)
    model = FedMRGModel(m)
    out: Path = args.out
    trainer = LocalTrainer(
        model, t, site=name, train_dataset=train, workspace=out, tb_dir=out / "tb", progress=not args.no_progress
    )
    _say(f"{name}: {len(train)} training and {len(val)} validation studies; {t.rounds} round(s) of "
         f"{trainer.steps_per_round(steps=args.steps, epochs=args.epochs)} step(s) on {trainer.device}")  # fmt: skip
    history = []
    shared = private = None
    try:
        for r in range(t.rounds):
            result = trainer.train_round(shared, private, round_num=r, steps=args.steps, epochs=args.epochs)
            shared, private = result.shared_state, result.private_state
            adapter = "mixed" if model.has_specialized else "generic"
            val_metrics = evaluate_loss(model, val, batch_size=t.eval_batch_size, adapter=adapter) if len(val) else {}
            trainer.scalars.log(val_metrics, step=r, group="val/")
            record = {"round": r, "num_samples": result.num_samples, **result.metrics}
            record |= {f"val/{k}": v for k, v in val_metrics.items()}
            history.append(record)
            _say(
                f"round {r}: loss g/lm {result.metrics.get('g/lm', float('nan')):.3f}, val lm "
                f"{val_metrics.get('lm_loss', float('nan')):.3f}, {result.metrics['samples_per_s']:.1f} samples/s, "
                f"skipped {int(result.metrics['skipped_batches'])} batch(es)"
            )
            save_checkpoint(
                out, model, config, shared_state=get_shared_state(model),
                private_states={name: get_private_state(model)}, metrics={"rounds": history},
            )  # fmt: skip
    finally:
        trainer.close()
    if t.head_calibration == "lda":
        from fedmrg.report.head_calibration import calibrate

        plain = open_split(data, site=site, split="train", image_size=m.encoder.image_size)
        stats = calibrate(model, [plain], shrinkage=t.head_calibration_shrinkage, batch_size=t.eval_batch_size)
        _say(f"diagnosis head calibrated (LDA) on the pooled features of {stats.count} training studies")
        save_checkpoint(
            out, model, config, shared_state=get_shared_state(model),
            private_states={name: get_private_state(model)}, metrics={"rounds": history},
        )  # fmt: skip
    (out / "train_metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history), encoding="utf-8")
    print(f"run folder: {out}")
    return 0


# ---------------------------------------------------------------------------------------------------- evaluate


def run_evaluate(args: argparse.Namespace) -> int:
    from torch.utils.data import Subset

    from fedmrg.data.dataset_dir import FederatedDataset
    from fedmrg.errors import DataError
    from fedmrg.report.data_loading import dataset_records, open_split
    from fedmrg.report.evaluation import (
        generate_for_dataset,
        headline,
        most_frequent_baseline,
        score_rows,
        write_predictions,
    )
    from fedmrg.report.export import load_model
    from fedmrg.report.trainer import resolve_device

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    # --site names the data; a site without a specialized adapter here (an unseen one) is scored with G alone
    loaded = load_model(args.model, site=args.site, generic_only=args.generic_only, require_site=False,
                        device=resolve_device(args.device))  # fmt: skip
    _say(f"adapter: {_adapter_words(loaded)}")
    data = FederatedDataset.open(args.data)
    dataset = open_split(data, site=args.site, split=args.split, image_size=loaded.config.model.encoder.image_size)
    records = dataset_records(dataset)
    if args.limit:
        dataset = Subset(dataset, range(min(args.limit, len(dataset))))
        records = records[: len(dataset)]
    if len(dataset) == 0:
        raise DataError(f"{args.data}: split {args.split!r} of {args.site or 'all sites'} has no studies")
    kwargs = _generation_kwargs(args, loaded)
    rows = generate_for_dataset(
        loaded.model,
        dataset,
        batch_size=args.batch_size or loaded.config.training.eval_batch_size,
        generic_only=loaded.adapter == "generic",
        progress=not args.no_progress,
        oracle_states=args.oracle_states,
        **kwargs,
    )
    result = score_rows(rows)
    train_sites = [args.site] if args.site in data.sites else list(data.sites)
    baseline = most_frequent_baseline((r.report for s in train_sites for r in data.split(s, "train")), rows)
    home = args.model if args.model.is_dir() else args.model.parent
    out: Path = args.out or home / "eval" / f"{args.site or 'all'}-{args.split}"
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "model": str(args.model),
        "data": str(args.data),
        "site": args.site,
        "split": args.split,
        "n_studies": len(records),
        "adapter": loaded.adapter,
        "oracle_states": args.oracle_states,
        "private_site": loaded.private_site,
        "headline": headline(result),
        "baseline_most_frequent_report": {"headline": headline(baseline), "report": baseline["report"]},
        "metrics": result,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float) + "\n", encoding="utf-8")
    write_predictions(rows, out / "predictions.jsonl")
    h, b = summary["headline"], summary["baseline_most_frequent_report"]["headline"]
    print(f"{'metric':<10}{'model':>10}{'baseline':>10}")
    for k in h:
        print(f"{k:<10}{h[k]:>10.4f}{b.get(k, float('nan')):>10.4f}")
    print(f"metrics: {out / 'metrics.json'}\npredictions: {out / 'predictions.jsonl'}")
    return 0


# ---------------------------------------------------------------------------------------------------- generate


def _adapter_words(loaded: Any) -> str:
    if loaded.private_site is None:
        return "generic adapter G alone"
    return f"personalized: G mixed with the specialized adapter of {loaded.private_site}"


def run_generate(args: argparse.Namespace) -> int:
    from fedmrg.inference.outputs import to_csv, to_json, to_text, write_dicom_sr
    from fedmrg.inference.predict import Predictor
    from fedmrg.report.export import load_model
    from fedmrg.report.trainer import resolve_device

    loaded = load_model(args.model, site=args.site, generic_only=args.generic_only,
                        device=resolve_device(args.device))  # fmt: skip
    _say(f"adapter: {_adapter_words(loaded)}")
    kwargs = _generation_kwargs(args, loaded)
    preds = Predictor(loaded).predict_files(args.images, **kwargs)  # DataError names a bad file
    for path, pred in zip(args.images, preds, strict=True):
        print(to_json(pred) if args.json else to_text(pred))
        if args.sr:
            sr = write_dicom_sr(pred, args.sr / f"{path.name}.sr.dcm", source_image=path)
            _say(f"DICOM SR: {sr}")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        args.csv.write_text(to_csv(preds), encoding="utf-8")
        _say(f"CSV: {args.csv}")
    return 0


# ---------------------------------------------------------------------------------------------------- export


def run_export(args: argparse.Namespace) -> int:
    from fedmrg.report.export import export_model

    out = export_model(args.source, site=args.site, out=args.out, overwrite=args.overwrite)
    print(f"model folder: {out}\nmodel card:   {out / 'README.md'}\n"
          f"use it:       fedmrg generate --model {out} IMAGE.png")  # fmt: skip
    return 0


# ---------------------------------------------------------------------------------------------------- inspect


def run_inspect_model(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from fedmrg.config import load_yaml
    from fedmrg.errors import ConfigError
    from fedmrg.report.inspect_model import build_meta_model, count_parameters, format_counts
    from fedmrg.report.model import FedMRGModel
    from fedmrg.report.run_config import load_run_config, resolve_builtin_paths, run_config_from_dict

    path = _config_path(args.config)
    if args.meta:
        raw, _ = resolve_builtin_paths(load_yaml(path), progress=False)
        decoder = raw.get("decoder")
        if not isinstance(decoder, dict) or not decoder.get("path"):
            raise ConfigError(f"{path}: `decoder.path` is required")
        decoder_path = Path(str(decoder["path"]))
        decoder_path = decoder_path if decoder_path.is_absolute() else path.parent / decoder_path
        if not decoder_path.is_dir():
            # A placeholder path (no model here): validate the rest of the file with an existing folder in its place;
            # the architecture then comes from --decoder-shape.
            raw["decoder"] = {**decoder, "path": str(path.parent.resolve())}
        config = run_config_from_dict(raw, source=str(path), base_dir=path.parent)
        model_config = dataclasses.replace(
            config.model, decoder=dataclasses.replace(config.model.decoder, path=str(decoder_path))
        )
        if args.method == "all":
            from fedmrg.report.config import METHODS
            from fedmrg.report.inspect_model import comm_table, format_comm_table

            rows = comm_table(model_config, args.decoder_shape, list(METHODS))
            print(
                json.dumps(rows, indent=2) if args.json else f"config: {path} (meta device)\n{format_comm_table(rows)}"
            )
            return 0
        if args.method:
            from fedmrg.report.inspect_model import with_method

            model_config = with_method(model_config, args.method)
        model = build_meta_model(model_config, args.decoder_shape)
    else:
        if args.method == "all":
            raise ConfigError("--method all counts on the meta device: add --meta")
        config = load_run_config(path)
        torch.manual_seed(config.training.seed)
        if args.method:
            from fedmrg.report.inspect_model import with_method

            config = dataclasses.replace(config, model=with_method(config.model, args.method))
        model = FedMRGModel(config.model)
    counts = count_parameters(model)
    counts["config"] = str(path)
    if args.json:
        print(json.dumps(counts, indent=2))
    else:
        print(f"config: {path}{' (meta device, no weights)' if args.meta else ''}")
        print(format_counts(counts))
    return 0
