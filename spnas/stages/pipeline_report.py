"""The pipeline's report: ``report.md`` and a self-contained ``report.html`` (pictures inlined).

It only reads what the stages wrote: their ``done.json`` results, the run
folders' metrics, the search plot, the retrain curve and the confusion
matrix. The supernet's loss curve is drawn against the original SPOS code's
measured curve (``../shared/reference``) when the supernet ran that curve's
recipe (batch 96, lr 0.025, crop and flip only) and the file is there.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from spnas.files import atomic_write_text
from spnas.resume import read_saved_config

REFERENCE_CSV = Path(__file__).resolve().parents[3] / "shared" / "reference" / \
    "spos_c10_supernet_b96_steps.csv"


def _reference_matches(run_dir: Path) -> bool:
    cfg = read_saved_config(run_dir / "config.json") or {}
    o, d = cfg.get("optim"), cfg.get("data")
    if not (isinstance(o, dict) and isinstance(d, dict)):  # not a config spnas wrote
        return False
    return (o.get("batch_size") == 96 and o.get("lr") == 0.025 and not d.get("cutout")
            and not d.get("auto_aug") and not d.get("resize") and REFERENCE_CSV.is_file())


def supernet_plot(out: Path) -> Path | None:
    """The supernet's loss curve (and the reference's, where the recipe matches)."""
    from spnas.engine.curves import load_curve, plot_comparison
    run = out / "supernet"
    if not (run / "metrics.jsonl").is_file():
        return None
    curves = [load_curve(run, "spnas supernet")]
    if _reference_matches(run):
        curves.append(load_curve(REFERENCE_CSV, "original code (H200)"))
    paths = plot_comparison(curves, out / "report_files")
    return next(p for p in paths if p.suffix == ".png")


def _pictures(out: Path) -> list[tuple[str, Path]]:
    found = [("Supernet training loss", supernet_plot(out))]
    search = sorted((out / "search").glob("accuracy_vs_*.png"))
    found += [("Search: accuracy against cost, Pareto front", search[0] if search else None),
              ("Retraining", out / "retrain" / "curve.png"),
              ("Confusion matrix (test set)", out / "evaluate" / "confusion.png")]
    return [(t, p) for t, p in found if p is not None and p.is_file()]


def _profile(arch_file: Path) -> dict | None:
    """Parameters, MACs and CPU latency at batch 1 of the chosen arch (a quick measurement)."""
    from spnas.arch import Arch
    from spnas.stages.profile import profile_arch
    try:
        arch = Arch.load(arch_file)
    except Exception:  # the report never fails on a missing or odd file
        return None
    return profile_arch(arch, warmup=3, repeats=10, batch=1)


def _rows(results: dict, times: dict, profile: dict | None) -> list[tuple[str, str]]:
    search, ev = results.get("search", {}), results.get("evaluate", {})
    rows = [("architecture", f"`{search.get('best_arch', '?')}`")]
    if profile:
        rows += [("parameters", f"{profile['params']:,}"),
                 ("multiply-accumulates", f"{profile['macs'] / 1e6:.1f}M at "
                  f"{profile['resolution']}x{profile['resolution']}"),
                 ("latency", f"{profile['batch1_ms']:.2f} ms at batch 1 on {profile['device']}")]
    if ev:
        rows += [("test top-1", f"{ev['top1']:.2%}"), ("test top-5", f"{ev['top5']:.2%}"),
                 ("test images", f"{ev['n']:,}"),
                 ("network tested", f"`{ev.get('checkpoint', '?')}`")]  # best.pt, else last.pt
    export = results.get("export", {})
    if export:
        rows.append(("exported", f"{export.get('file')} ({export.get('format')})"))
    rows += [(f"time: {stage}", f"{sec:.0f} s") for stage, sec in times.items()]
    rows.append(("time: all stages", f"{sum(times.values()):.0f} s"))
    return rows


def write_report(out: Path, results: dict, times: dict, recipe: dict) -> list[Path]:
    profile = _profile(out / "search" / "best_arch.json")
    rows, pictures = _rows(results, times, profile), _pictures(out)
    md = ["# spnas pipeline report", "", f"Run folder: `{out}`", "", "| | |", "| --- | --- |"]
    md += [f"| {k} | {v} |" for k, v in rows]
    for title, path in pictures:
        md += ["", f"## {title}", "", f"![{title}]({path.relative_to(out)})"]
    md += ["", "## Recipe", "", "```json", json.dumps(recipe, indent=2, default=str), "```", ""]
    atomic_write_text(out / "report.md", "\n".join(md))
    atomic_write_text(out / "report.html", _html(rows, pictures, recipe))
    return [out / "report.md", out / "report.html"]


def _html(rows, pictures, recipe) -> str:
    esc = html.escape
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v.strip('`'))}</td></tr>" for k, v in rows)
    figs = "".join(
        f"<h2>{esc(t)}</h2><img alt='{esc(t)}' style='max-width:100%' src='data:image/png;base64,"
        f"{base64.b64encode(p.read_bytes()).decode()}'>" for t, p in pictures)
    recipe_text = esc(json.dumps(recipe, indent=2, default=str))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>spnas pipeline report</title>"
            f"<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}"
            f"th{{text-align:left;padding-right:1em}}</style></head><body>"
            f"<h1>spnas pipeline report</h1><table>{cells}</table>{figs}"
            f"<h2>Recipe</h2><pre>{recipe_text}</pre></body></html>\n")
