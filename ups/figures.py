"""PNG figures of the evaluation and the run report (matplotlib, Agg backend, written atomically)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ups.atomic import write_bytes


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def _figure(width: float = 6.4, height: float = 3.6) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def probe_figure(path: Path, rows: list[dict[str, Any]]) -> None:
    """LID probe accuracy per layer: init vs continued, MFCC control and chance as lines."""
    fig, ax = _figure()
    layers = [r["layer"] for r in rows]
    for key, label, style in (("init_accuracy", "initial model", "o-"),
                              ("continued_accuracy", "continued model", "s-")):
        pts = [(r["layer"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    if rows and rows[0].get("mfcc_accuracy") is not None:
        ax.axhline(rows[0]["mfcc_accuracy"], color="green", ls="--", label="MFCC mean+std control")
    if rows and rows[0].get("chance_majority") is not None:
        ax.axhline(rows[0]["chance_majority"], color="grey", ls=":", label="majority class")
    ax.set_xlabel("layer (0 = transformer input)")
    ax.set_ylabel("LID test accuracy")
    ax.set_xticks(layers)
    ax.set_ylim(0, 1)
    ax.set_title("Language-ID linear probe per layer")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    _save(fig, path)


def curves_figure(path: Path, series: dict[str, list[tuple[float, float]]], *, title: str,
                  ylabel: str) -> None:
    """Lines of (step, value) per name."""
    fig, ax = _figure()
    for name, pts in sorted(series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None,
                label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if series:
        ax.legend(fontsize=8)
    _save(fig, path)


def usage_figure(path: Path, counts: list[int], *, title: str) -> None:
    """Cluster usage, sorted from most to least used."""
    fig, ax = _figure()
    total = max(1, sum(counts))
    shares = sorted((c / total for c in counts), reverse=True)
    ax.bar(range(len(shares)), shares, width=1.0)
    ax.axhline(1 / max(1, len(counts)), color="grey", ls=":", label="uniform")
    ax.set_xlabel("cluster (sorted by use)")
    ax.set_ylabel("share of frames")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)
