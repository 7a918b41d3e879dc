"""`ups report` / `make report`: one self-contained HTML page from a run's own outputs.

Sections: selection (hours per language, from data/select/), k-means (cluster usage, from
data/kmeans/ and data/labels/), training (loss and accuracy curves, from dvclive/), evaluation
(probe accuracy per layer and the metrics table, from reports/evaluate/). PNGs are embedded as
base64, so the page can be mailed or archived alone. A missing piece shows "not run".
"""

from __future__ import annotations

import base64
import csv
import html
import tempfile
from pathlib import Path
from typing import Any

import orjson

from ups.atomic import write_bytes

CSS = """body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f3f3f3}td.k{text-align:left}.notrun{color:#a00;font-style:italic}img{max-width:100%}
.figs{display:flex;flex-wrap:wrap;gap:8px}.figs img{max-width:480px}"""


def _json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _not_run(what: str) -> str:
    return f'<p class="notrun">{html.escape(what)}: not run</p>'


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": leaf} (lists are left out)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif not isinstance(d, list):
        out[prefix[:-1]] = d
    return out


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f'<tr><td class="k">{html.escape(k)}</td><td>{_fmt(v)}</td></tr>' for k, v in rows)
    return f"<table><tr><th>metric</th><th>value</th></tr>{body}</table>"


def _tsv(path: Path, column: str) -> list[tuple[float, float]]:
    with open(path, newline="") as fh:
        return [(float(r["step"]), float(r[column])) for r in csv.DictReader(fh, delimiter="\t")
                if r.get(column) not in (None, "")]


def _selection(run: Path) -> str:
    png = run / "data" / "select" / "hours_per_language.png"
    rep = _json(run / "data" / "select" / "report.json")
    if not png.is_file() and rep is None:
        return _not_run("selection (data/select)")
    parts = [_img(png, "hours per language")] if png.is_file() else []
    if isinstance(rep, dict):
        keep = [(k, v) for k, v in rep.items() if isinstance(v, int | float) and not isinstance(v, bool)]
        parts.append(_table(sorted(keep)))
    return "".join(parts)


def _kmeans(run: Path, tmp: Path) -> str:
    from ups.figures import usage_figure

    labels = _json(run / "data" / "labels" / "report.json")
    km = _json(run / "data" / "kmeans" / "report.json")
    if labels is None and km is None:
        return _not_run("k-means and labels (data/kmeans, data/labels)")
    parts = []
    hist = None
    if isinstance(labels, dict):
        hist = (labels.get("splits", {}).get("train") or {}).get("usage_histogram")
    if hist is None and isinstance(km, dict):
        hist = km.get("usage_histogram")
    if hist:
        usage_figure(tmp / "usage.png", [int(x) for x in hist], title="k-means cluster usage (train)")
        parts.append(_img(tmp / "usage.png", "cluster usage"))
    rows: list[tuple[str, Any]] = []
    for name, rep in (("kmeans", km), ("labels", labels)):
        if isinstance(rep, dict):
            rows += [(f"{name}.{k}", v) for k, v in flatten(rep).items()
                     if not k.startswith("config.") and not k.startswith("skipped.")
                     and isinstance(v, int | float | str) and not isinstance(v, bool)]
    parts.append(_table(rows[:40]))
    return "".join(parts)


def _training(run: Path, tmp: Path) -> str:
    from ups.figures import curves_figure

    base = run / "dvclive" / "plots" / "metrics"
    if not base.is_dir():
        return _not_run("training (dvclive)")
    parts = []
    for group, title, ylabel in (("loss", "masked-prediction loss", "cross-entropy"),
                                 ("acc_masked", "accuracy on masked frames", "accuracy")):
        series = {}
        for split in ("train", "valid"):
            p = base / split / f"{group}.tsv"
            if p.is_file():
                series[f"{split}/{group}"] = _tsv(p, group)
        if series:
            out = tmp / f"curve_{group}.png"
            curves_figure(out, series, title=title, ylabel=ylabel)
            parts.append(_img(out, title))
    summary = _json(run / "dvclive" / "metrics.json")
    fig_html = f'<div class="figs">{"".join(parts)}</div>' if parts else _not_run("training curves")
    if isinstance(summary, dict):
        fig_html += _table(sorted((k, v) for k, v in flatten(summary).items() if isinstance(v, int | float)))
    return fig_html


def _evaluation(run: Path, tmp: Path) -> str:
    from ups.figures import probe_figure

    ev = run / "reports" / "evaluate"
    metrics = _json(ev / "metrics.json")
    if metrics is None:
        return _not_run("evaluation (reports/evaluate)")
    parts = []
    csv_path = ev / "probe_layers.csv"
    if csv_path.is_file():
        with open(csv_path, newline="") as fh:
            rows = [{k: (None if v == "" else (int(v) if k == "layer" else float(v))) for k, v in r.items()}
                    for r in csv.DictReader(fh)]
        if rows:
            probe_figure(tmp / "probe.png", rows)
            parts.append(_img(tmp / "probe.png", "probe accuracy per layer"))
    parts.append(_table(sorted(flatten(metrics).items())))
    return "".join(parts)


def build(run_dir: Path) -> str:
    run = Path(run_dir)
    with tempfile.TemporaryDirectory(prefix="ups-report-") as t:
        tmp = Path(t)
        sections = [
            ("Selection: hours per language", _selection(run)),
            ("k-means labels", _kmeans(run, tmp)),
            ("Training", _training(run, tmp)),
            ("Evaluation: initial vs continued model", _evaluation(run, tmp)),
        ]
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    title = f"UPS HuBERT continued pre-training: {html.escape(str(run.resolve().name))}"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{CSS}</style></head><body><h1>{title}</h1>{body}</body></html>\n")


def write(run_dir: Path, out: Path | None = None) -> Path:
    out = out or Path(run_dir) / "reports" / "report.html"
    write_bytes(out, build(run_dir).encode("utf-8"))
    return out
