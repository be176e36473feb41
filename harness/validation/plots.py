"""The PNGs of ``harness validate``: per-seed values, training curves and scaling fits of one comparison.
matplotlib is imported only when a plot is drawn."""

from __future__ import annotations

from pathlib import Path

from harness.validation.comparison import ladder_points

DPI = 90


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_box(comp: dict, path: Path, objective: str) -> None:
    plt = _plt()
    rows = comp["stats"]["seeds"]
    b = [r["baseline"] for r in rows if r["baseline"] is not None]
    c = [r["candidate"] for r in rows if r["candidate"] is not None]
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.boxplot([b, c], tick_labels=["baseline", "candidate"], widths=0.5)
    for r in rows:
        if r["baseline"] is not None and r["candidate"] is not None:
            ax.plot([1, 2], [r["baseline"], r["candidate"]], color="0.6", lw=0.7, zorder=1)
    ax.scatter([1] * len(b), b, color="tab:blue", s=16, zorder=2)
    ax.scatter([2] * len(c), c, color="tab:orange", s=16, zorder=2)
    ax.set_ylabel(objective + " (lower is better)")
    ax.set_title(f"{comp['label']}\nper seed (lines join the same seed)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_curves(comp: dict, base_runs: list[dict], cand_runs: list[dict], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for runs, color, name in ((base_runs, "tab:blue", "baseline"), (cand_runs, "tab:orange", "candidate")):
        first = True
        for r in runs:
            if not r["ok"]:
                continue
            last = r["record"]["runs"][-1]
            ax.plot([p[0] for p in last["val_curve"]], [p[1] for p in last["val_curve"]], color=color, lw=1.2,
                    alpha=0.8, marker="o", ms=3, label=f"{name} validation" if first else None)
            ax.plot([p[0] for p in last["train_curve"]], [p[1] for p in last["train_curve"]], color=color, lw=0.6,
                    alpha=0.35, label=f"{name} train" if first else None)
            first = False
    ax.set_xlabel("step")
    ax.set_ylabel("loss (largest rung trained)")
    ax.set_title(f"{comp['label']}: training curves, one line per seed", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_scaling(comp: dict, base_runs: list[dict], cand_runs: list[dict], path: Path) -> None:
    import numpy as np

    plt = _plt()
    sc = comp["stats"]["scaling"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for runs, fit, color, name in ((base_runs, sc["baseline"], "tab:blue", "baseline"),
                                   (cand_runs, sc["candidate"], "tab:orange", "candidate")):
        xs = []
        for params, losses in ladder_points(runs):
            ax.scatter(params, losses, color=color, s=12, alpha=0.6)
            xs += params
        if xs:
            grid = np.geomspace(min(xs), max(xs), 20)
            lo, hi = fit["slope_ci"]
            ax.plot(grid, fit["mean_intercept"] + fit["mean_slope"] * np.log(grid), color=color,
                    label=f"{name}: b = {fit['mean_slope']:.4f} [{lo:.4f}, {hi:.4f}]")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("final validation loss")
    ax.set_title(f"{comp['label']}: loss = a + b ln N (mean fit, 95% CI of b)", fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
