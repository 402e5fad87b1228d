"""Markdown and PNG renderings of a run summary (the dict written by :class:`~fedmrg.fl.run_summary.RunSummary`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the training metric plotted, the first one present (a learner's main loss: the toy's, FedMRG's LM loss of the G step)
PLOT_TRAIN_KEYS = ("loss", "g/lm")
#: validation values that are counts, not scores (left out of the score plot)
COUNT_KEYS = ("n",)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _unit(n: float) -> tuple[float, str]:
    """The largest binary unit that keeps ``n`` bytes >= 1 (B, KiB, MiB, GiB)."""
    for power, name in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if n >= 1024**power:
            return 1024**power, name
    return 1, "B"


def _size(n: int | float | None) -> str:
    if n is None:
        return "–"
    div, name = _unit(n)
    return f"{n:.0f} B" if div == 1 else f"{n / div:.3g} {name}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def _sites_ok(r: dict[str, Any]) -> str:
    """``valid/targets`` and the names of the absent sites (``2/3 (missing site-c)``)."""
    p = r.get("participation")
    if not p:
        sites = r.get("sites", {})
        return f"{sum(1 for s in sites.values() if s.get('accepted'))}/{len(sites)}"
    absent = sorted({**(p.get("failed") or {}), **(p.get("missing") or {})})
    text = f"{len(p.get('valid') or [])}/{len(p.get('targets') or [])}"
    return text + (f" (without {', '.join(absent)})" if absent else "")


def _eps(v: float | None) -> str:
    return "no DP" if v is None else f"{v:.4g}"


def _seen(cross: dict[str, dict[str, Any]]) -> set[str]:
    return {m for by_model in cross.values() for m in by_model}


def render_markdown(summary: dict[str, Any]) -> str:
    """A human-readable report: per-round table, best round, cross-site table, totals."""
    rounds = summary.get("rounds", [])
    train_keys = sorted({k for r in rounds for k in r.get("train", {})})
    val_keys = sorted({k for r in rounds for k in r.get("val", {})})
    out = [f"# Run summary ({summary.get('job_id') or 'job'})", ""]
    out.append(
        f"Shared state: {_fmt(summary.get('num_shared_keys'))} keys, "
        f"{_size(summary.get('shared_param_bytes'))} as fp32."
    )
    out += [
        "",
        "## Rounds",
        "",
        "Means over accepted sites weighted by training samples. `val/*` is the global model received at the start "
        "of the round (produced by the previous round). `down` / `up` are the FOBS-serialised train tasks and "
        "results of all sites; `fp32 up` the raw bytes of the uploaded shared arrays alone.",
        "",
    ]
    header = ["round", "sites ok", *[f"train/{k}" for k in train_keys], *[f"val/{k}" for k in val_keys]]
    header += ["down", "up", "fp32 up", "seconds"]
    rows = []
    for r in rounds:
        row = [r["round"], _sites_ok(r)]
        row += [r.get("train", {}).get(k) for k in train_keys] + [r.get("val", {}).get(k) for k in val_keys]
        row += [_size(r.get("bytes_down")), _size(r.get("bytes_up")), _size(r.get("param_bytes_up")), r.get("seconds")]
        rows.append(row)
    out += _table(header, rows)

    not_aggregated = [r for r in rounds if r.get("aggregated") is False]
    for r in not_aggregated:
        p = r.get("participation") or {}
        out += [
            "",
            f"**Round {r['round']} was NOT aggregated**: {len(p.get('valid') or [])} valid update(s) "
            f"{p.get('valid') or []}, fewer than min_clients={p.get('min_clients')}; the global model stayed.",
        ]
    absent = summary.get("absent") or []
    if absent:
        out += ["", "## Sites missing from rounds", "", "Sites sent `train` whose update was not aggregated.", ""]
        out += _table(["round", "site", "reason"], [[a["round"], a["site"], a["reason"]] for a in absent])

    rejected = [(r["round"], s) for r in rounds for s, v in r.get("sites", {}).items() if v.get("accepted") is False]
    if rejected:
        out += ["", "Rejected updates: " + ", ".join(f"{s} (round {r})" for r, s in rejected) + "."]

    privacy = summary.get("privacy") or {}
    if privacy:
        out += ["", "## Differential privacy per site", ""]
        out.append("Latest epsilon each site reported; `no DP` where the site trained without that mechanism.")
        out += [""]
        rows = [[site, *[_eps(v.get(k)) for k in ("dp/epsilon", "site_dp/epsilon")]] for site, v in privacy.items()]
        out += _table(["site", "patient-level ε (DP-SGD)", "site-level ε"], rows)

    best = summary.get("best")
    out += ["", "## Best global model", ""]
    if best:
        out.append(
            f"Model of round {_fmt(best.get('model_of_round'))}: {best.get('key_metric')} = {_fmt(best.get('value'))} "
            f"(validated in round {_fmt(best.get('validated_in_round'))})."
        )
    else:
        out.append("None selected (no IntimeModelSelector, or no validation after round 0).")

    cross = summary.get("cross_site", {})
    out += ["", "## Cross-site evaluation", ""]
    if cross:
        models = sorted({m for by_model in cross.values() for m in by_model})
        metric_keys = sorted({k for by_model in cross.values() for m in by_model.values() for k in m})
        missing = summary.get("cross_site_missing") or {}
        models += [m for m in missing.get("models", []) if m not in models]
        data_sites = [*cross, *[s for s in missing.get("data_sites", []) if s not in cross]]
        out.append("Rows: the site whose data evaluated the model; columns: the model. `MISSING`: a site that trained "
                   "but sent no validation, or whose model nobody evaluated.")  # fmt: skip
        for key in metric_keys:
            out += ["", f"**{key}**", ""]
            rows = []
            for s in data_sites:
                if s not in cross:
                    rows.append([f"{s} (MISSING)", *["MISSING"] * len(models)])
                    continue
                rows.append([s, *[cross[s].get(m, {}).get(key) if m in _seen(cross) else "MISSING" for m in models]])
            out += _table(["data site", *models], rows)
    else:
        out.append("No cross-site evaluation in this run.")

    errors = summary.get("errors") or []
    if errors:
        out += ["", "## Failed results", "", "Results that came back with an error code (not aggregated).", ""]
        rows = [[e.get("round"), e.get("site"), e.get("task"), e.get("rc"), e.get("message")] for e in errors]
        out += _table(["round", "site", "task", "return code", "message"], rows)

    totals = summary.get("totals", {})
    out += [
        "",
        "## Totals",
        "",
        f"Train traffic: {_size(totals.get('bytes_down'))} down, {_size(totals.get('bytes_up'))} up; "
        f"training time {_fmt(totals.get('seconds'))} s.",
        "",
    ]
    return "\n".join(out)


def render_png(summary: dict[str, Any], path: str | Path) -> None:
    """Four panels: train loss, validation metrics, MiB per round (down/up), seconds per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = summary.get("rounds", [])
    xs = [r["round"] for r in rounds]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)

    ax = axes[0, 0]
    train_keys = sorted({k for r in rounds for k in r.get("train", {})})
    key = next((k for k in PLOT_TRAIN_KEYS if k in train_keys), train_keys[0] if train_keys else None)
    if key:
        sites = sorted({s for r in rounds for s in r.get("sites", {})})
        for s in sites:
            pts = [(r["round"], r["sites"][s]["train"].get(key)) for r in rounds if s in r.get("sites", {})]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=".", alpha=0.6, label=s)
        pts = [(r["round"], r["train"].get(key)) for r in rounds if r.get("train", {}).get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), color="black", linewidth=2, marker="o", label="mean")
        ax.legend(fontsize=7)
    ax.set(title=f"train {key or '(no metrics)'}", xlabel="round")

    ax = axes[0, 1]
    for k in sorted({k for r in rounds for k in r.get("val", {})} - set(COUNT_KEYS)):
        pts = [(r["round"], r["val"].get(k)) for r in rounds if r.get("val", {}).get(k) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=k)
    if ax.lines:
        ax.legend(fontsize=7)
    ax.set(title="validation (global model at round start), mean over sites", xlabel="round")

    ax = axes[1, 0]
    width = 0.4
    div, unit = _unit(max([max(r.get("bytes_down", 0), r.get("bytes_up", 0)) for r in rounds] or [0]))
    ax.bar([x - width / 2 for x in xs], [r.get("bytes_down", 0) / div for r in rounds], width, label="down")
    ax.bar([x + width / 2 for x in xs], [r.get("bytes_up", 0) / div for r in rounds], width, label="up")
    ax.plot(xs, [r.get("param_bytes_up", 0) / div for r in rounds], "k--", marker="_", label="fp32 arrays up")
    ax.legend(fontsize=7)
    ax.set(title="serialised train traffic, all sites", xlabel="round", ylabel=unit)

    ax = axes[1, 1]
    ax.bar(xs, [r.get("seconds") or 0.0 for r in rounds], color="tab:gray")
    ax.set(title="wall time per round", xlabel="round", ylabel="s")

    for a in axes.flat:
        if xs:
            a.set_xticks(xs)
    fig.savefig(path, dpi=100)
    plt.close(fig)
