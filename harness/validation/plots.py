"""The PNGs of ``harness validate``, drawn from ``validation.json``'s content alone: per comparison the per-seed
bars, the box plot, the training curves at the compared size, the scaling curves with their CI band, and the
token-mixing patterns; across frameworks, the best of each. matplotlib is imported only when a plot is drawn."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from harness.validation import stats

DPI = 90
COLORS = {"baseline": "tab:blue", "candidate": "tab:orange"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _signed(x) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:+.4f}"


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)


def plot_comparison(comp: dict, result: dict, out_dir: Path) -> dict[str, str]:
    """Every plot of one comparison; returns {kind: file name} of those drawn."""
    slug = comp["slug"]
    drawn = {}
    for kind, draw in (("seeds", plot_seed_bars), ("box", plot_box), ("curves", plot_curves),
                       ("scaling", plot_scaling), ("mixing", plot_mixing)):
        name = f"{slug}_{kind}.png"
        if draw(comp, result, out_dir / name):
            drawn[kind] = name
    comp["plots"] = drawn
    return drawn


def plot_seed_bars(comp: dict, result: dict, path: Path) -> bool:
    """Per seed, the candidate's difference from its baseline (negative is better)."""
    plt = _plt()
    rows = [r for r in comp["stats"]["seeds"] if r.get("diff") is not None]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(rows) + 2), 3.6))
    x = np.arange(len(rows))
    diffs = [r["diff"] for r in rows]
    ax.bar(x, diffs, width=0.6, color=["tab:green" if d < 0 else "tab:red" for d in diffs])
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.set_xticks(x, [str(r["seed"]) for r in rows])
    ax.set_xlabel("seed")
    ax.set_ylabel("candidate − baseline\n(final loss; < 0 is better)")
    p = comp["stats"]["primary"]
    ax.set_title(f"{comp['label']}: difference per seed\nmean {_signed(p['diff'])}, 95% CI "
                 f"[{_signed(p['ci_low'])}, {_signed(p['ci_high'])}]", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)
    return True


def plot_box(comp: dict, result: dict, path: Path) -> bool:
    plt = _plt()
    rows = comp["stats"]["seeds"]
    b = [r["baseline"] for r in rows if r["baseline"] is not None]
    c = [r["candidate"] for r in rows if r["candidate"] is not None]
    if not b or not c:
        return False
    fig, ax = plt.subplots(figsize=(4.4, 3.8))
    ax.boxplot([b, c], tick_labels=["baseline", "candidate"], widths=0.5)
    for r in rows:
        if r["baseline"] is not None and r["candidate"] is not None:
            ax.plot([1, 2], [r["baseline"], r["candidate"]], color="0.6", lw=0.7, zorder=1)
    ax.scatter([1] * len(b), b, color=COLORS["baseline"], s=16, zorder=2)
    ax.scatter([2] * len(c), c, color=COLORS["candidate"], s=16, zorder=2)
    ax.set_ylabel("final validation loss (lower is better)")
    ax.set_title(f"{comp['label']}\nper seed at the reference size (lines join a seed)", fontsize=8)
    _save(fig, path)
    return True


def _reference(run: dict, reference: list) -> dict | None:
    rec = run.get("record")
    if not rec:
        return None
    return next((r for r in rec["runs"] if list(r["rung"]) == list(reference)), None)


def plot_curves(comp: dict, result: dict, path: Path) -> bool:
    """Training (thin) and validation (markers) loss per seed, at the reference size the comparison uses."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    drew = False
    for side in ("baseline", "candidate"):
        first = True
        for run in comp["runs"][side]:
            r = _reference(run, result["reference_rung"])
            if r is None:
                continue
            if r.get("train_curve"):
                ax.plot(*zip(*r["train_curve"]), color=COLORS[side], lw=0.6, alpha=0.45,
                        label=f"{side}, training" if first else None)
            ax.plot(*zip(*r["val_curve"]), color=COLORS[side], lw=1.0, marker="o", ms=3, alpha=0.9,
                    label=f"{side}, validation" if first else None)
            first, drew = False, True
    if not drew:
        _plt().close(fig)
        return False
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{comp['label']}: training curves at the reference size "
                 f"{tuple(result['reference_rung'])}, one line per seed", fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def plot_scaling(comp: dict, result: dict, path: Path) -> bool:
    """Loss against N per seed, the mean fit loss = a + b ln N, and the 95 % band of the mean curve across seeds."""
    sc = comp["stats"].get("scaling")
    if not sc:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for side in ("baseline", "candidate"):
        fit, color = sc[side], COLORS[side]
        xs = []
        for run in comp["runs"][side]:
            rec = run.get("record")
            if rec and run.get("seed") in sc["seeds"]:
                params = [r["non_embedding_params"] for r in rec["runs"]]
                ax.scatter(params, [r["final_val_loss"] for r in rec["runs"]], color=color, s=12, alpha=0.6)
                xs += params
        if not xs:
            continue
        grid = np.geomspace(min(xs), max(xs), 30)
        curves = np.array([[s["a"] + s["b"] * math.log(x) for x in grid] for s in fit["per_seed"]])
        band = [stats.mean_ci(curves[:, i]) for i in range(len(grid))]
        ax.plot(grid, [m for m, _, _ in band], color=color,
                label=f"{side}: b = {fit['mean_slope']:.4f} [{fit['slope_ci'][0]:.4f}, {fit['slope_ci'][1]:.4f}], "
                      f"pooled R² = {(fit['pooled'] or {}).get('r2', math.nan):.3f}")
        if len(curves) > 1:
            ax.fill_between(grid, [lo for _, lo, _ in band], [hi for _, _, hi in band], color=color, alpha=0.18)
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("final validation loss")
    st = sc["slope_test"]
    ax.set_title(f"{comp['label']}: loss = a + b ln N, mean fit and 95% band over seeds; paired slope test "
                 f"p = {stats.format_p(st['p'])}", fontsize=8)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)
    ax.grid(alpha=0.3, which="both")
    _save(fig, path)
    return True


def plot_mixing(comp: dict, result: dict, path: Path) -> bool:
    """The effective token-mixing matrix of each attention layer, baseline above and candidate below."""
    maps = {side: _mixing_layers(m, path.parent) for side, m in (comp.get("mixing") or {}).items()}
    if not maps.get("baseline") or not maps.get("candidate"):
        return False
    plt = _plt()
    n_layers = max(len(maps["baseline"]["layers"]), len(maps["candidate"]["layers"]))
    fig, axes = plt.subplots(2, n_layers, figsize=(2.6 * n_layers + 0.6, 5.4), squeeze=False)
    for row, side in enumerate(("baseline", "candidate")):
        for col in range(n_layers):
            ax = axes[row][col]
            layers = maps[side]["layers"]
            if col >= len(layers):
                ax.axis("off")
                continue
            m = np.asarray(layers[col], dtype=float)
            ax.imshow(np.sqrt(m), cmap="viridis", interpolation="nearest")
            ax.set_title(f"{side}, layer {col}", fontsize=7)
            ax.set_xlabel("input position i", fontsize=6)
            ax.set_ylabel("output position t", fontsize=6)
            ax.tick_params(labelsize=5)
    rung = tuple(maps["candidate"].get("rung") or ())
    fig.suptitle(f"{comp['label']}: token mixing |∂y_t/∂x_i| summed over channels, rows normalised (sqrt scale)\n"
                 f"seed {maps['candidate'].get('seed')}, size {rung}, one validation sequence", fontsize=7)
    _save(fig, path)
    return True


def _mixing_layers(m: dict | None, folder: Path) -> dict | None:
    """A side's matrices: in the entry itself while a validation runs, else in the .npz the report stores."""
    if not m or ("layers" not in m and "file" not in m):
        return None
    if "layers" in m:
        return m
    with np.load(folder / m["file"]) as saved:
        return m | {"layers": [saved[f"{m['side']}_layer{i}"] for i in range(m["n_layers"])]}


def plot_frameworks(result: dict, path: Path) -> bool:
    fw = result["frameworks"]
    plt = _plt()
    names = list(fw["candidates"])
    best = {c["label"]: c for c in result["candidates"] if c.get("stats")}
    data = [[r["candidate"] for r in best[fw["candidates"][n]]["stats"]["seeds"] if r["candidate"] is not None]
            for n in names]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2.4, 3.6))
    ax.boxplot(data, tick_labels=names, widths=0.5)
    for i, values in enumerate(data, start=1):
        ax.scatter([i] * len(values), values, s=14, color="tab:orange", zorder=2)
    ax.set_ylabel("final validation loss (lower is better)")
    ax.set_title(f"best candidate of each framework; ANOVA p = {stats.format_p(fw['anova']['p'])}, "
                 f"Kruskal-Wallis p = {stats.format_p(fw['kruskal']['p'])}", fontsize=8)
    _save(fig, path)
    return True
