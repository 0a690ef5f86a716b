"""Tables, JSON and plots of metric values (matplotlib with the Agg backend, no display needed)."""

from __future__ import annotations

import io
import json
import math

import numpy as np

from . import references
from .references import DATASETS
from .suites import PROTOCOLS, SUITES, suite_metrics


def reported(metric, raw: float) -> float:
    return raw * metric.scale if raw is not None and not math.isnan(raw) else float("nan")


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _label(metric) -> str:
    return f"{metric.label} ({metric.unit})" if metric.unit else metric.label


def to_json(results: dict) -> str:
    """``results``: {suite: {key: raw}} -> JSON with raw and reported values and the references."""
    payload = {}
    for suite, values in results.items():
        entries = {}
        for metric in suite_metrics(suite):
            raw = values.get(metric.key, float("nan"))
            entries[metric.key] = {
                "label": metric.label, "value": json_number(raw), "reported": json_number(reported(metric, raw)),
                "scale": metric.scale, "unit": metric.unit, "higher_is_better": metric.higher_is_better,
                "references": references.values(suite, metric.key),
            }
        payload[suite] = {"name": SUITES[suite][0], "protocol": PROTOCOLS[suite], "metrics": entries,
                          "reference_rows": [{"method": r.method, "dataset": DATASETS[r.dataset], "source": r.source,
                                              "protocol": r.protocol} for r in references.rows(suite)]}
    return json.dumps(payload, indent=2)


def json_number(value):
    """JSON has no NaN / inf: NaN -> null, inf -> the string "inf"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def reference_notes(suite: str, dataset: str | None = None) -> list:
    """Markdown list lines labelling the papers' rows: dataset, source, backbones and preprocessing."""
    return [f"- {r.label()}" for r in references.rows(suite, dataset)]


def to_table(results: dict) -> str:
    """A markdown table per set: metric, our value (paper scale), better direction, references;
    then our protocol and each reference row's dataset and protocol (compare like with like)."""
    lines = []
    for suite, values in results.items():
        lines += [f"### {SUITES[suite][0]}", "", "| metric | value | better | papers |", "|---|---|---|---|"]
        for metric in suite_metrics(suite):
            refs = references.values(suite, metric.key)
            ref_text = ", ".join(f"{name} {_fmt(v)}" for name, v in refs.items()) or "-"
            lines.append(f"| {_label(metric)} | {_fmt(reported(metric, values.get(metric.key, float('nan'))))} | "
                         f"{'higher' if metric.higher_is_better else 'lower'} | {ref_text} |")
        lines += ["", f"Ours: {PROTOCOLS[suite]}."]
        notes = reference_notes(suite)
        if notes:
            lines += ["Papers' rows (comparable only on the same dataset and protocol):"] + notes
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _figure_to_array(fig) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi)
    buf.seek(0)
    from PIL import Image

    return np.asarray(Image.open(buf).convert("RGB"))


def plot_metrics(results: dict, dpi: int = 80) -> np.ndarray:
    """One small bar chart per metric (our value), the papers' values drawn as labelled ticks.

    Metrics have unrelated scales, so each gets its own axis. Returns an RGB uint8 array."""
    plt = _pyplot()
    panels = [(suite, metric, values.get(metric.key, float("nan")))
              for suite, values in results.items() for metric in suite_metrics(suite)]
    cols = min(4, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), dpi=dpi, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (suite, metric, raw) in zip(axes.flat, panels):
        value = reported(metric, raw)
        refs = references.values(suite, metric.key)
        shown = value if math.isfinite(value) else 0.0
        ax.bar([0], [shown], width=0.6, color="#4C72B0" if math.isfinite(value) else "#cccccc")
        ax.text(0, shown, _fmt(value), ha="center", va="bottom", fontsize=8)
        for i, (name, ref) in enumerate(refs.items()):
            ax.hlines(ref, -0.45, 0.45, colors=f"C{(i % 9) + 1}", linestyles="--", linewidth=1)
            ax.text(0.47, ref, name, fontsize=6, va="center", color=f"C{(i % 9) + 1}")
        top = max([shown, *refs.values(), 1e-9])
        ax.set_ylim(0, top * 1.25)
        ax.set_xlim(-0.6, 1.4)
        ax.set_xticks([])
        arrow = "higher" if metric.higher_is_better else "lower"
        ax.set_title(f"{SUITES[suite][0]}: {_label(metric)}\n({arrow} is better)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    image = _figure_to_array(fig)
    plt.close(fig)
    return image


def plot_distributions(rows: list, suite: str, metric, group_key: str, path: str, dpi: int = 90,
                       dataset: str | None = None) -> None:
    """Box plot of one metric's per-sample values, one box per edit type, papers' values (the rows
    measured on ``dataset`` when given) as lines."""
    plt = _pyplot()
    groups = {}
    for row in rows:
        value = row.get(metric.key)
        if value is None or not math.isfinite(value):
            continue
        groups.setdefault(str(row.get(group_key, "all")), []).append(value * metric.scale)
    names = sorted(groups)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.2), dpi=dpi)
    if names:
        ax.boxplot([groups[n] for n in names], showmeans=True)
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    refs = references.values(suite, metric.key, dataset)
    for i, (name, ref) in enumerate(refs.items()):
        ax.axhline(ref, color=f"C{(i % 9) + 1}", linestyle="--", linewidth=1, label=name)
    if refs:
        ax.legend(fontsize=6)
    ax.set_title(f"{SUITES[suite][0]}: {_label(metric)} per edit type "
                 f"({'higher' if metric.higher_is_better else 'lower'} is better)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
