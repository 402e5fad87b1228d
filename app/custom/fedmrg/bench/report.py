"""``fedmrg bench report``: the benchmark's Markdown table (the paper's layout) and PNG plots from its runs.

Reads ``<out>/runs/<partition>/<method>/seed<k>/metrics.json`` and writes ``<out>/benchmark.md``,
``<out>/val_<partition>.png`` (validation CE-F1 and BLEU-4 vs round, one line per method, mean over seeds) and
``<out>/frontier_<partition>.png`` (in-domain CE-F1 vs measured bytes per round, one point per federated method).
Numbers are percentages (x 100) as in the paper; ``a ± b`` is the mean and the sample standard deviation over seeds.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from fedmrg.bench.runner import ABLATIONS, BENCH_METHODS, METRIC_KEYS, PARTITIONS, read_metrics

LABELS = {"BLEU_1": "B-1", "BLEU_2": "B-2", "BLEU_3": "B-3", "BLEU_4": "B-4", "ROUGE_L": "R-L", "CIDEr": "CIDEr",
          "CE_P": "CE-P", "CE_R": "CE-R", "CE_F1": "CE-F1"}  # fmt: skip
COMM_FILE = "comm_7b.json"


def load_runs(out: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """partition -> method -> finished runs' metrics (sorted by seed)."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for path in sorted((out / "runs").glob("*/*/seed*/metrics.json")):
        m = read_metrics(path)
        runs.setdefault(m["partition"], {}).setdefault(m["method"], []).append(m)
    for methods in runs.values():
        for rows in methods.values():
            rows.sort(key=lambda m: m["seed"])
    return runs


def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _cell(values: list[float], scale: float = 100.0) -> str:
    m, s = mean_std(values)
    return "-" if math.isnan(m) else f"{m * scale:.1f} ± {s * scale:.1f}"


def comm_7b(out: Path) -> dict[str, float]:
    """Communicated parameters per benchmark row at Llama-2-7B + ResNet-101 scale (``llama2-7b.yaml`` on the meta
    device, as ``fedmrg inspect-model --meta --decoder-shape llama-2-7b``); cached in ``<out>/comm_7b.json``."""
    cache = out / COMM_FILE
    if cache.is_file():
        return json.loads(cache.read_text())
    import dataclasses

    from fedmrg.config import load_yaml
    from fedmrg.report.inspect_model import build_meta_model, count_parameters, with_method
    from fedmrg.report.run_config import packaged_config, resolve_builtin_paths, run_config_from_dict

    path = packaged_config("llama2-7b.yaml")
    raw, _ = resolve_builtin_paths(load_yaml(path), progress=False)
    decoder_path = raw["decoder"]["path"]
    raw["decoder"] = {**raw["decoder"], "path": str(path.parent.resolve())}  # placeholder: the shape is packaged
    config = run_config_from_dict(raw, source=str(path), base_dir=path.parent).model
    config = dataclasses.replace(config, decoder=dataclasses.replace(config.decoder, path=decoder_path))
    result: dict[str, float] = {}
    for row in BENCH_METHODS:
        if row in ("centralized", "local-only"):
            continue
        method = row if not row.startswith("fedmrg-") else "fedmrg"
        cfg = with_method(config, method)
        if row.startswith("fedmrg-"):
            flag = row.removeprefix("fedmrg-").replace("-", "_")
            cfg = dataclasses.replace(cfg, ablations=dataclasses.replace(cfg.ablations, **{flag: True}))
        result[row] = float(count_parameters(build_meta_model(cfg, "llama-2-7b"))["shared"]["parameters"])
    cache.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _table(methods: dict[str, list[dict[str, Any]]], comm: dict[str, float]) -> list[str]:
    head = ["Method", "seeds"]
    for where in ("in-domain", "unseen"):
        head += [f"{LABELS[k]} ({where})" for k in METRIC_KEYS]
    head += ["Comm. @7B (M)", "measured up / round (MB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = [m for m in BENCH_METHODS if m in methods] + sorted(set(methods) - set(BENCH_METHODS))
    for method in order:
        rows = methods[method]
        cells = [method, str(len(rows))]
        for where in ("in_domain", "unseen"):
            cells += [_cell([r.get(where, {}).get(k, math.nan) for r in rows]) for k in METRIC_KEYS]
        c = comm.get(method)
        cells.append("-" if c is None else f"{c / 1e6:.1f}")
        up = [r["bytes_per_round"]["up"] for r in rows]
        cells.append("-" if not any(up) else f"{statistics.fmean(up) / 1e6:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    base = [r["baseline"] for rows in methods.values() for r in rows]
    if base:
        cells = ["most frequent report", "-"]
        for where in ("in_domain", "unseen"):
            cells += [_cell([b.get(where, {}).get(k, math.nan) for b in base]) for k in METRIC_KEYS]
        lines.append("| " + " | ".join(cells + ["-", "-"]) + " |")
    return lines


def _delta(methods: dict[str, list[dict[str, Any]]], a: str, b: str, where: str, key: str) -> str:
    """Paired (same seed) difference a - b, mean ± std over seeds, x 100."""
    ra = {r["seed"]: r for r in methods.get(a, [])}
    rb = {r["seed"]: r for r in methods.get(b, [])}
    seeds = sorted(set(ra) & set(rb))
    diffs = [ra[s].get(where, {}).get(key, math.nan) - rb[s].get(where, {}).get(key, math.nan) for s in seeds]
    return _cell(diffs) + f" (n={len(seeds)})"


def plot_validation(methods: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in ((axes[0], "ce_f1", "validation CE-F1"), (axes[1], "bleu4", "validation BLEU-4")):
        for method, rows in methods.items():
            n = min(len(r["rounds"]) for r in rows)
            xs, ys = [], []
            for i in range(n):
                m, _ = mean_std([r["rounds"][i].get("val", {}).get(key, math.nan) for r in rows])
                if not math.isnan(m):
                    xs.append(i)
                    ys.append(m)
            if xs:
                ax.plot(xs, ys, marker="o", ms=3, label=method, ls="--" if method.startswith("fedmrg-") else "-")
        ax.set_xlabel("round (model received at the round's start)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_frontier(methods: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, rows in methods.items():
        up = [r["bytes_per_round"]["up"] for r in rows]
        if not any(up):
            continue
        x = statistics.fmean(up) / 1e6
        y, s = mean_std([r["in_domain"].get("CE_F1", math.nan) for r in rows])
        ax.errorbar([x], [y], yerr=[s], fmt="o", capsize=3, label=method)
        ax.annotate(method, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    base = [r["baseline"]["in_domain"].get("CE_F1", math.nan) for rows in methods.values() for r in rows]
    m, _ = mean_std(base)
    if not math.isnan(m):
        ax.axhline(m, color="grey", ls=":", label="most frequent report")
    xs = [statistics.fmean(r["bytes_per_round"]["up"] for r in rows) for rows in methods.values() if rows]
    wide = bool(xs) and min(xs) > 0 and max(xs) / min(xs) > 10  # log scale only where the bytes span a decade
    if wide:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("measured bytes uploaded per round, all sites (MB" + (", log)" if wide else ")"))
    ax.set_ylabel("in-domain CE-F1 (mean ± std over seeds)")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: Path, *, comm: bool = True) -> Path:
    """Write ``<out>/benchmark.md`` and the PNG plots; returns the Markdown path."""
    runs = load_runs(out)
    if not runs:
        from fedmrg.errors import FedMRGError

        raise FedMRGError(f"{out}: no finished run (runs/*/*/seed*/metrics.json); run `fedmrg bench run` first")
    comm_rows = comm_7b(out) if comm else {}
    every_run = [run for by_method in runs.values() for rows in by_method.values() for run in rows]
    any_run = every_run[0]
    prof = any_run["profile"]
    budget = ("rounds", "local_steps", "image_size", "config", "overrides")
    budgets = {tuple(json.dumps(run["profile"].get(k), sort_keys=True) for k in budget) for run in every_run}
    if len(budgets) > 1:  # one table must compare rows at one budget
        from fedmrg.errors import FedMRGError

        raise FedMRGError(
            f"{out}: the runs were trained at different budgets ({', '.join(map(str, sorted(budgets)))} as "
            f"{budget}); give each budget its own --out folder"
        )
    seeds = sorted({int(run["seed"]) for run in every_run})
    lines = [
        "# Benchmark: FedMRG against its baselines",
        "",
        f"Profile: {prof['rounds']} rounds x {prof['local_steps']} local steps per site, image {prof['image_size']} px, "
        f"seeds {', '.join(map(str, seeds))}, {prof['eval_studies'] or 'all'} studies scored per evaluation "
        f"set, config {prof['config']}; orchestrator {any_run['orchestrator']}.",
        "",
        "Metrics x 100, mean ± std over seeds. In-domain: the in-domain test studies (a seeded random draw, the same "
        "for every row), each scored with the model of the site it was drawn from (personalized where the method has "
        "a specialized adapter). Unseen: the unseen site, generic adapter only. Text metrics: BLEU-1..4 (corpus), ROUGE-L, CIDEr "
        "(IDF from the scored references) on lower-cased, R2Gen-cleaned text; CE: the project's rule-based labeler, "
        "14 observations, uncertain = negative, example-based P/R/F1. Comm. @7B: communicated parameters at "
        "Llama-2-7B + ResNet-101 (`fedmrg inspect-model --config llama2-7b.yaml --meta --decoder-shape llama-2-7b`); "
        "measured: FOBS-serialised bytes uploaded per round by all sites together at the benchmark's scale.",
        "",
    ]
    for partition in [p for p in PARTITIONS if p in runs] + sorted(set(runs) - set(PARTITIONS)):
        methods = runs[partition]
        lines += [f"## Partition: {partition}", "", *_table(methods, comm_rows), ""]
        if "fedmrg" in methods and "fedlora" in methods:
            lines += ["FedMRG − Fed-LoRA (paired by seed, x 100):", ""]
            for where, name in (("in_domain", "in-domain"), ("unseen", "unseen")):
                lines.append(f"- {name}: CE-F1 {_delta(methods, 'fedmrg', 'fedlora', where, 'CE_F1')}, "
                             f"BLEU-4 {_delta(methods, 'fedmrg', 'fedlora', where, 'BLEU_4')}")  # fmt: skip
            lines.append("")
        ablations = [f"fedmrg-{a.replace('_', '-')}" for a in ABLATIONS]
        if "fedmrg" in methods and any(a in methods for a in ablations):
            lines += ["Ablations: ablation − FedMRG (paired by seed, x 100; negative = the component helps):", ""]
            for a in [a for a in ablations if a in methods]:
                lines.append(f"- {a}: in-domain CE-F1 {_delta(methods, a, 'fedmrg', 'in_domain', 'CE_F1')}, "
                             f"BLEU-4 {_delta(methods, a, 'fedmrg', 'in_domain', 'BLEU_4')}; unseen CE-F1 "
                             f"{_delta(methods, a, 'fedmrg', 'unseen', 'CE_F1')}")  # fmt: skip
            lines.append("")
        val = plot_validation(methods, out / f"val_{partition}.png", f"validation vs round ({partition})")
        front = plot_frontier(methods, out / f"frontier_{partition}.png", f"CE-F1 vs bytes per round ({partition})")
        lines += [f"![validation vs round]({val.name})", "", f"![CE-F1 vs bytes per round]({front.name})", ""]
    path = out / "benchmark.md"
    path.write_text("\n".join(lines))
    return path
