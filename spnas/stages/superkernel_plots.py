"""Plots of a superkernel search, read from its metrics.jsonl alone.

``latency.png``: the predicted latency over the steps (the formula at the
gates, averaged between log lines, and the table lookup of the decoded arch),
with the end of the warm-up and the target. ``decisions.png``: each layer's
choice at every ``decisions`` record, one colour per token. ``plot_recipes``:
the recipe comparison of ``benchmarks/superkernel_recipes.py`` (table latency of
each found arch against its retrained test accuracy, one colour per recipe);
``plot_thresholds``: the mean threshold of each gate kind over the steps of
several runs.
"""
from __future__ import annotations

from pathlib import Path

from spnas.engine.plots import figure
from spnas.engine.runlog import read_metrics

TOKEN_COLOURS = {"k3e3": "#a6cee3", "k3e6": "#1f78b4", "k5e3": "#b2df8a", "k5e6": "#33a02c",
                 "skip": "#f0f0f0"}


def plot_latency(records: list[dict], unit: str, warmup_step: int, target: float | None,
                 path: Path) -> Path:
    train = [r for r in records if r["type"] == "train" and "latency" in r]
    decided = [r for r in records if r["type"] == "decisions"]
    fig = figure(6, 3.2, dpi=80)
    ax = fig.subplots()
    ax.plot([r["step"] for r in train], [r["latency"] for r in train], label="formula (mean)")
    ax.step([r["step"] for r in decided], [r["latency"] for r in decided], where="post",
            label="table, decoded arch")
    ax.axvline(warmup_step, color="grey", ls=":", label="end of warm-up")
    if target is not None:
        ax.axhline(target, color="red", ls="--", label="target")
    ax.set_xlabel("step")
    ax.set_ylabel(f"predicted latency ({unit})")
    ax.legend(fontsize=7)
    fig.savefig(path)
    return path


def plot_decisions(records: list[dict], path: Path) -> Path:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    decided = [r for r in records if r["type"] == "decisions"]
    tokens = list(TOKEN_COLOURS)
    grid = [[tokens.index(t) for t in r["arch"].replace("|", " ").split()] for r in decided]
    fig = figure(6, 3.6, dpi=80)
    ax = fig.subplots()
    image = [list(col) for col in zip(*grid)]  # layers x records
    ax.imshow(image, aspect="auto", interpolation="nearest", vmin=0, vmax=len(tokens) - 1,
              cmap=ListedColormap([TOKEN_COLOURS[t] for t in tokens]))
    steps = [r["step"] for r in decided]
    ticks = sorted({0, len(steps) - 1, *range(0, len(steps), max(len(steps) // 6, 1))})
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks])
    ax.set_xlabel("step")
    ax.set_ylabel("layer")
    ax.set_yticks(range(0, len(image), 4))
    for y in range(4, len(image), 4):  # stage boundaries
        ax.axhline(y - 0.5, color="white", lw=1)
    ax.legend(handles=[Patch(color=TOKEN_COLOURS[t], label=t) for t in tokens], fontsize=7,
              loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path)
    return path


def plot_superkernel_run(run_dir: str | Path, unit: str, warmup_step: int,
                target: float | None = None) -> list[Path]:
    """Write latency.png and decisions.png into ``run_dir``; return their paths."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    return [plot_latency(records, unit, warmup_step, target, run_dir / "latency.png"),
            plot_decisions(records, run_dir / "decisions.png")]


RECIPE_COLOURS = {"spnas": "#1f78b4", "paper": "#e31a1c"}


def plot_recipes(rows: list[dict], path: str | Path) -> Path:
    """Each search's arch: table latency (x) and retrained test accuracy (y), labelled lambda."""
    fig = figure(5.6, 3.6, dpi=80)
    ax = fig.subplots()
    for recipe, colour in RECIPE_COLOURS.items():
        mine = [r for r in rows if r["recipe"] == recipe]
        if not mine:
            continue
        ax.scatter([r["latency_ms"] for r in mine], [100 * r["test_acc"] for r in mine],
                   color=colour, label=f"--recipe {recipe}")
        for r in mine:
            ax.annotate(f"{r['lam']:g}", (r["latency_ms"], 100 * r["test_acc"]), fontsize=7,
                        xytext=(4, 2), textcoords="offset points", color=colour)
    ax.set_xlabel("table latency of the found arch (ms)")
    ax.set_ylabel("retrained test accuracy (%)")
    ax.legend(fontsize=7, title="labels: lambda (recipe's convention)", title_fontsize=7)
    fig.savefig(path)
    return Path(path)


def plot_thresholds(runs: dict[str, Path], path: str | Path) -> Path:
    """Mean t_k5, t_e3, t_e6 over the layers at every ``decisions`` record, one panel each;
    ``runs`` maps a label starting with the recipe's name to a run folder."""
    fig = figure(8, 2.8, dpi=80)
    axes = fig.subplots(1, 3, sharey=True)
    seen: dict[str, int] = {}
    for label, run_dir in runs.items():
        recipe = label.split()[0]
        style = ("-", "--", ":", "-.")[seen.get(recipe, 0) % 4]
        seen[recipe] = seen.get(recipe, 0) + 1
        decided = [r for r in read_metrics(Path(run_dir)) if r["type"] == "decisions"]
        steps = [r["step"] for r in decided]
        for k, ax in enumerate(axes):
            means = [sum(row[k] for row in r["thresholds"]) / len(r["thresholds"]) for r in decided]
            ax.plot(steps, means, style, label=label, color=RECIPE_COLOURS.get(recipe))
    for ax, name in zip(axes, ("t_k5", "t_e3", "t_e6")):
        ax.set_title(f"mean {name}", fontsize=8)
        ax.set_xlabel("step")
    axes[-1].legend(fontsize=6)
    fig.savefig(path)
    return Path(path)
