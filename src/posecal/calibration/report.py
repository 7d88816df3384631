"""Calibration report: ``metrics.json``, PNG figures and ``index.html`` in a directory.

The only module of posecal that imports matplotlib (the ``report`` extra), with the Agg backend.
Every file is written atomically (temporary file + rename), and ``index.html`` is written last and
references only the figures that were written.
"""

from __future__ import annotations

import html
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from posecal._util import atomic_path, write_bytes_atomic, write_json_atomic
from posecal.calibration.audit import PRIMARY_KEYS, Audit
from posecal.errors import PosecalWarning

__all__ = ["FIGURES", "write_report"]

FIGURES = {
    "pr_curves.png": "Precision–recall at OKS 0.50 / 0.75 with original, oracle (= OKS) and random "
    "confidence (paper Fig. 1)",
    "reliability.png": "Reliability diagram: mean OKS vs mean confidence per bin, with the confidence "
    "histogram",
    "sparsification.png": "Sparsification curves (remove the least confident fraction; mean error of the "
    "rest) with the oracle",
    "visibility_scores.png": "Keypoint confidence of visible / occluded / unlabelled keypoints "
    "(paper Fig. 4a)",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _no_data(ax, msg: str = "no data") -> None:
    ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _placeholder(plt, path: Path, msg: str) -> None:
    """A figure that says why the real one could not be drawn (the page keeps its layout)."""
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.set_axis_off()
    _no_data(ax, msg[:120])
    _save(fig, path)
    plt.close(fig)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.4f}" if abs(v) < 1e6 else f"{v:.4g}"  # scores near 1e308 are legal: not 309 digits
    return str(v)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _fig_pr(plt, a: Audit, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    rec = a.curves["recall"]
    styles = {"original": ("C0", "-"), "oracle": ("C2", "--"), "random": ("C3", ":")}
    labels = {"original": "original", "oracle": "oracle (conf = OKS)", "random": "random (mean over seeds)"}
    for ax, thr in zip(axes, (0.5, 0.75), strict=True):
        drawn = False
        for name, curves in a.curves["pr"].items():
            p = curves.get(thr)
            if p is None or not np.isfinite(p).any():
                continue
            valid = np.isfinite(p)
            ap = float(np.mean(np.where(valid, p, 0.0)))
            c, ls = styles.get(name, ("k", "-"))
            ax.plot(rec[valid], p[valid], color=c, ls=ls, label=f"{labels.get(name, name)}: AP {ap:.3f}")
            drawn = True
        if not drawn:
            _no_data(ax)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=f"OKS {thr:.2f}")
        if drawn:
            ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _fig_reliability(plt, a: Audit, path: Path) -> None:
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=(3, 1.3), sharex=True)
    r = a.curves["reliability"].get("ece")
    if r is None:
        _no_data(ax)
        _no_data(axh)
    else:
        ok = r.count > 0
        lo, hi = float(r.edges[0]), float(r.edges[-1])
        centers = 0.5 * (r.edges[:-1] + r.edges[1:])
        width = np.diff(r.edges)
        ax.bar(
            centers[ok], r.mean_target[ok], width=width[ok] * 0.9, color="C0", alpha=0.75, label="mean OKS"
        )
        ax.plot(
            r.mean_confidence[ok], r.mean_target[ok], "o", color="C1", ms=4, label="(mean conf, mean OKS)"
        )
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="perfect calibration")
        ax.set(ylabel="mean OKS in bin", ylim=(0, max(1.0, hi)))
        ax.set_title(
            f"instance level: ECE {r.ece:.3f}, MCE {r.mce:.3f}\n({r.count.size} equal-width bins)",
            fontsize=10,
        )
        ax.legend(loc="upper left", fontsize=8)
        axh.hist(a.curves["instance_confidence"], bins=r.edges, color="0.5")
        axh.set(xlabel="instance confidence", ylabel="count")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _fig_sparsification(plt, a: Audit, path: Path) -> None:
    panels = [
        ("ause_instance", "instance, error = 1 − OKS"),
        ("ause_keypoint", "keypoint, error = 1 − OKS"),
        ("ause_instance_pck", f"instance, error = 1 − PCK@{a.metrics.get('pck_alpha')}"),
        ("ause_keypoint_pck", f"keypoint, error = 1 − PCK@{a.metrics.get('pck_alpha')}"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for ax, (key, title) in zip(axes.ravel(), panels, strict=True):
        s = a.curves["sparsification"].get(key)
        if s is None:
            _no_data(ax, a.metrics.get(key + "_reason") or "no data")
            ax.set_title(title, fontsize=10)
            continue
        ax.plot(s.fraction, s.curve, color="C0", label="confidence")
        ax.plot(s.fraction, s.oracle, color="C2", ls="--", label="oracle")
        ax.plot(s.fraction, s.worst, color="C3", ls=":", label="reversed oracle")
        ax.set(
            xlim=(0, 1), xlabel="fraction removed (least confident first)", ylabel="mean error of the rest"
        )
        ax.set_title(f"{title}: AUSE {s.ause:.4f}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _fig_visibility(plt, a: Audit, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = {k: v for k, v in a.curves["score_by_visibility"].items() if v.size}
    if not groups:
        _no_data(ax)
    else:
        allv = np.concatenate(list(groups.values()))
        edges = np.linspace(min(0.0, float(allv.min())), max(1.0, float(allv.max())), 31)
        for i, (name, x) in enumerate(groups.items()):
            ax.hist(
                x,
                bins=edges,
                density=True,
                histtype="step",
                lw=1.8,
                color=f"C{i}",
                label=f"{name}, n={x.size}",
            )
        ax.legend(fontsize=8)
    ax.set(xlabel="keypoint confidence", ylabel="density", title="keypoint confidence by gt visibility")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


HEADLINE = (
    ("mAP", "AP", "COCO keypoint AP (OKS .50:.95), instances ranked by their confidence"),
    ("mAR", "AR", "COCO keypoint AR: the same detections, no ranking; AP cannot exceed it"),
    ("gap", "gap", "AR − AP: what ranking by confidence loses; 0 for a perfect ranking"),
    ("oracle_AP", "oracle AP", "AP if each person's best detection were scored by its true OKS and every "
                                "duplicate or false positive by 0: the best any rescoring can do"),
    ("pearson_instance", "Pearson", "correlation of instance confidence with OKS (1: confidence tracks accuracy)"),
    ("ause_instance", "AUSE", "area between the sparsification curve and the oracle's (0: confidence orders "
     "errors perfectly)"),
    ("ece", "ECE", "expected calibration error: mean |confidence − OKS| over confidence bins (0: calibrated)"),
)


def _headline(m: dict[str, Any]) -> str:
    cells = []
    for key, name, meaning in HEADLINE:
        v = m.get(key)
        why = m.get(key + "_reason")
        val = _fmt(v) + (f' <span class="why">({html.escape(why)})</span>' if v is None and why else "")
        cells.append(f'<tr><th>{html.escape(name)}</th><td class="num">{val}</td>'
                     f"<td>{html.escape(meaning)}</td></tr>")
    return f'<table class="headline">{"".join(cells)}</table>'


def _pct(v: Any) -> str:
    """A target share as a percentage (0.95 -> '95 %')."""
    return f"{100 * v:g} %" if isinstance(v, float) and math.isfinite(v) else _fmt(v)


def _thresholds(m: dict[str, Any]) -> str:
    """The keypoint-threshold table (:func:`posecal.calibration.audit.keypoint_threshold_metrics`)."""
    kt = m.get("keypoint_thresholds") or {}
    rows = []
    for r in kt.get("targets", []):
        if r.get("threshold") is None:
            rows.append(f"<tr><td>{_pct(r.get('target'))}</td><td colspan=\"3\">n/a "
                        f"({html.escape(str(r.get('threshold_reason') or ''))})</td></tr>")
        else:
            rows.append(f"<tr><td>{_pct(r['target'])}</td><td>&ge; {_fmt(r['threshold'])}</td>"
                        f"<td>{_fmt(r['kept'])} ({r['n_kept']} of {r['n']})</td><td>{_fmt(r['precision'])}</td></tr>")
    if not rows:
        return ""
    per = kt.get("per_keypoint") or []
    targets = [r.get("target") for r in kt.get("targets", [])]

    def cell(r: dict[str, Any]) -> str:
        if r.get("threshold") is None:
            return "<td>n/a</td>"
        return f"<td>&ge; {_fmt(r['threshold'])}: {_fmt(r['kept'])}</td>"

    per_rows = "".join(
        f"<tr><td>{html.escape(str(p.get('keypoint')))}</td><td>{p.get('n')}</td><td>{_fmt(p.get('share_correct'))}</td>"
        f"<td>{_fmt(p.get('mean_confidence'))}</td>{''.join(cell(r) for r in p.get('targets', []))}</tr>" for p in per)
    per_table = ("<details><summary>Per keypoint type (a threshold for each joint)</summary><table><tr><th>keypoint"
                 "</th><th>labelled</th><th>share correct</th><th>mean confidence</th>"
                 + "".join(f"<th>{_pct(t)} correct: threshold: share kept</th>" for t in targets)
                 + f"</tr>{per_rows}</table></details>") if per else ""
    return (f"<h2>Keypoint thresholds</h2><p>Drop keypoints whose confidence is below a threshold: for each required "
            f"share of correct keypoints ({html.escape(str(kt.get('correct')))}), the threshold that keeps the most "
            f"keypoints. Pairs: {html.escape(str(kt.get('pairs')))}; {kt.get('n_keypoints', 0)} keypoints, "
            f"{_fmt(kt.get('share_correct'))} of them correct. Choose the threshold on validation data.</p>"
            f"<table><tr><th>required share correct</th><th>threshold</th><th>share kept</th>"
            f"<th>share correct among kept</th></tr>{''.join(rows)}</table>{per_table}")


def _html(a: Audit, figures: list[str], coco: dict[str, Any], title: str,
          sources: dict[str, str] | None = None) -> str:
    m = a.metrics
    rows = []
    for k in PRIMARY_KEYS:
        reason = m.get(k + "_reason")
        rows.append(f"<tr><td>{k}</td><td>{_fmt(m.get(k))}</td><td>{html.escape(reason or '')}</td></tr>")
    extra = [
        k
        for k, v in m.items()
        if k not in PRIMARY_KEYS
        and not k.endswith("_reason")
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
    ]
    for k in extra:
        reason = html.escape(m.get(k + "_reason") or "")
        rows.append(f"<tr><td>{k}</td><td>{_fmt(m.get(k))}</td><td>{reason}</td></tr>")
    vis = m.get("visibility", {})
    for k in ("auroc", "ap", "brier", "auroc_keypoint_score"):
        rows.append(
            f"<tr><td>visibility.{k}</td><td>{_fmt(vis.get(k))}</td>"
            f"<td>{html.escape(vis.get(k + '_reason') or '')}</td></tr>"
        )
    coco_rows = "".join(f"<tr><td>{k}</td><td>{_fmt(float(v))}</td></tr>" for k, v in coco.items())
    figs = "".join(
        f'<figure><img src="{html.escape(f)}" alt="{html.escape(f)}"><figcaption>{html.escape(FIGURES[f])}'
        f"</figcaption></figure>"
        for f in figures
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in m.get("notes", []))
    src = "".join(f"<li>{html.escape(k)}: <code>{html.escape(str(v))}</code></li>"
                  for k, v in (sources or {}).items() if v)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta name="generator" content="posecal"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:1em auto;line-height:1.35}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}
table.headline th{{font-size:1.1em}}table.headline td.num{{font-size:1.3em;font-weight:bold;
font-variant-numeric:tabular-nums;text-align:right}}.why{{font-size:.7em;font-weight:normal;color:#666}}
img{{max-width:100%}}figure{{margin:1em 0}}details{{margin:1em 0}}summary{{cursor:pointer;font-size:1.2em}}
code{{background:#f4f4f4;padding:0 3px}}</style></head>
<body><h1>{html.escape(title)}</h1>
<ul>{src}<li>pairs: {html.escape(m.get("pairs", ""))}</li><li>all numbers: <a href="metrics.json">metrics.json</a></li>
</ul>
<h2>Headline</h2>{_headline(m)}<ul>{notes}</ul>
{_thresholds(m)}
<h2>Figures</h2>{figs}
<details><summary>All {len(rows)} calibration metrics</summary>
<table><tr><th>metric</th><th>value</th><th>why n/a</th></tr>{"".join(rows)}</table></details>
<details><summary>COCO keypoint AP / AR (10 stats)</summary><table>{coco_rows}</table></details>
</body></html>
"""


def write_report(
    a: Audit,
    out_dir: str | Path,
    *,
    document: dict[str, Any] | None = None,
    title: str = "posecal calibration report",
) -> dict[str, Path]:
    """Write ``metrics.json``, the PNG figures of :data:`FIGURES` and ``index.html`` into ``out_dir``
    (created). ``metrics.json`` is ``document`` (e.g. the ``posecal evaluate --json`` output, which has
    the ``"coco"`` key) with ``"calibration"`` set to ``a.metrics``; by default
    ``{"coco": a.coco, "calibration": a.metrics}``. Returns ``{name: path}`` of the files written."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    makers = {
        "pr_curves.png": _fig_pr,
        "reliability.png": _fig_reliability,
        "sparsification.png": _fig_sparsification,
        "visibility_scores.png": _fig_visibility,
    }
    for name, fn in makers.items():
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                fn(plt, a, out / name)
        except (ValueError, OverflowError) as e:  # e.g. scores near ±1e308: no axis can span them
            plt.close("all")
            _placeholder(plt, out / name, f"not drawn: {e}")
            warnings.warn(f"{name}: not drawn ({e}); the metrics are in metrics.json", PosecalWarning,
                          stacklevel=2)
        written[name] = out / name
    doc = dict(document) if document is not None else {"coco": a.coco}
    doc["calibration"] = a.metrics
    coco = doc.get("coco", a.coco)
    write_json_atomic(out / "metrics.json", doc)
    written["metrics.json"] = out / "metrics.json"
    figs = [f for f in FIGURES if f in written and (out / f).is_file()]
    sources = {"ground truth": doc.get("gt"), "predictions": doc.get("pred")}
    write_bytes_atomic(out / "index.html", _html(a, figs, coco, title, sources).encode(errors="backslashreplace"))
    written["index.html"] = out / "index.html"
    mode = _file_mode()
    for p in written.values():  # the atomic temporary files are 0600; a report is meant to be shared
        os.chmod(p, mode)
    return written


def _file_mode() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return 0o666 & ~old
