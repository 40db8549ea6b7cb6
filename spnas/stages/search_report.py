"""What a search leaves besides its record: arch files of the top-k, and plots.

The plots read only ``candidates.jsonl`` (logs are data), so they can be
redrawn for any search folder with ``plot_search(folder)``.
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.ticker import MaxNLocator

from spnas.engine.evolution import Candidate, pareto_front, rank, rank_key
from spnas.engine.plots import figure
from spnas.engine.runlog import read_metrics

FLOPS_UNIT = "multiply-accumulates"
AXES = {"flops": ("MFLOPs (multiply-accumulates)", 1e-6),
        "latency_ms": ("predicted latency (ms)", 1.0),
        "params": ("parameters (M)", 1e-6)}


def candidate_metrics(c: Candidate) -> dict:
    return {**c.score, **{k: v for k, v in c.cost.items() if v is not None},
            "flops_unit": FLOPS_UNIT}


def write_arch_files(out: Path, candidates: list[Candidate], top_k: int,
                     found_by: dict) -> list[Candidate]:
    """``top/rank_01.json`` ... for the top-k and ``best_arch.json``; returns the top-k."""
    top = rank(candidates, top_k)
    for i, c in enumerate(top, start=1):
        c.arch.save(out / "top" / f"rank_{i:02d}.json", {**found_by, "rank": i},
                    candidate_metrics(c))
    top[0].arch.save(out / "best_arch.json", {**found_by, "rank": 1}, candidate_metrics(top[0]))
    return top


def plot_search(out: str | Path, cost_key: str = "flops") -> list[Path]:
    """Accuracy against cost with the Pareto front, and accuracy per generation (if several)."""
    out = Path(out)
    records = read_metrics(out / "candidates.jsonl")
    paths = [_plot_front(records, cost_key, out / f"accuracy_vs_{cost_key.split('_')[0]}.png")]
    if len({r["generation"] for r in records}) > 1:
        paths.append(_plot_generations(records, out / "generations.png"))
    return paths


def _figure():
    fig = figure(6, 4.2)
    return fig, fig.add_subplot()


def _plot_front(records: list[dict], cost_key: str, path: Path) -> Path:
    label, scale = AXES[cost_key]
    xs = [r[cost_key] * scale for r in records]
    ys = [r["val_acc"] * 100 for r in records]
    fig, ax = _figure()
    dots = ax.scatter(xs, ys, c=[r["generation"] for r in records], cmap="viridis", s=14,
                      alpha=0.8, label="candidate")
    front = pareto_front(list(zip(xs, ys)))
    ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="tab:red",
            lw=1.2, label="Pareto front")
    ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=36, facecolors="none",
               edgecolors="tab:red")
    best = min(range(len(ys)), key=lambda i: (*rank_key(records[i]), i))  # as search.rank
    ax.scatter([xs[best]], [ys[best]], marker="*", s=160, color="tab:orange", zorder=3,
               label=f"best {ys[best]:.2f}%")
    if len({r["generation"] for r in records}) > 1:
        bar = fig.colorbar(dots, ax=ax, label="generation")
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=label, ylabel="validation accuracy (%)",
           title=f"{len(records)} candidates")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path)
    return path


def _plot_generations(records: list[dict], path: Path) -> Path:
    gens = sorted({r["generation"] for r in records})
    accs = {g: [r["val_acc"] * 100 for r in records if r["generation"] == g] for g in gens}
    best_so_far, running = [], -float("inf")
    for g in gens:
        running = max(running, max(accs[g]))
        best_so_far.append(running)
    fig, ax = _figure()
    ax.plot(gens, [max(accs[g]) for g in gens], "o-", ms=3, label="best of generation")
    ax.plot(gens, [sum(accs[g]) / len(accs[g]) for g in gens], "s-", ms=3,
            label="mean of generation")
    ax.plot(gens, best_so_far, "--", color="gray", label="best so far")
    ax.set(xlabel="generation", ylabel="validation accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path)
    return path
