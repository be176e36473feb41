"""The report's PNG plots (matplotlib, imported only when a plot is drawn)."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from harness.analysis.measures import best_so_far, fingerprint_groups, outcome_table
from harness.analysis.runs import Prog, Run
from harness.validation.stats import format_p

DPI = 90


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def short(fp: str | None) -> str:
    return (fp or "none")[:8]


def _save(fig, path: Path, legends: list[tuple] = ()) -> None:
    """Lay the figure out, then put each legend outside its axes, to the right of everything drawn beside
    them (a twin axis's labels, a colour bar), so that no legend covers a point; the figure is saved with
    bbox_inches="tight", which grows it to hold the legends. ``legends``: (axes, handles, labels, [beside])."""
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    for ax, handles, labels, beside in legends:
        if not handles:
            continue
        right = max(a.get_tightbbox(renderer).x1 for a in [ax, *beside])
        x = ax.transAxes.inverted().transform((right, 0))[0]
        ax.legend(handles, labels, fontsize=6, loc="upper left", bbox_to_anchor=(x + 0.01, 1.0), borderaxespad=0.0)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")


def plot_fitness(runs: list[Run], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(len(runs), 1, figsize=(7, 2.8 * len(runs)), squeeze=False)
    legends = []
    for ax, run in zip(axes[:, 0], runs):
        progs = run.evolved()
        groups, unver = fingerprint_groups(progs)
        colors = plt.cm.tab10.colors
        for i, (fp, members) in enumerate(sorted(groups.items())):
            c = colors[i % 10]
            ok = [p for p in members if p.valid]
            bad = [p for p in members if not p.valid]
            # Only series that hold points get a legend entry.
            if ok:
                ax.scatter([p.iteration for p in ok], [p.score for p in ok], color=c, s=18,
                           label=f"valid, fp {short(fp)}")
            if bad:
                ax.scatter([p.iteration for p in bad], [0.0 for _ in bad], color=c, marker="x", s=18, alpha=0.6,
                           label=f"rejected (0.0), fp {short(fp)}")
            bsf = best_so_far(members)
            if bsf:
                # Held to the run's last iteration: a group with one program still shows a line.
                bsf = bsf + [(max(run.last_iteration, bsf[-1][0]), bsf[-1][1])]
                ax.step([b[0] for b in bsf], [b[1] for b in bsf], where="post", color=c, lw=1.5,
                        label=f"best so far, fp {short(fp)}")
        if unver:
            ax.scatter([p.iteration for p in unver], [p.score for p in unver], color="grey", marker="^", s=18,
                       label="unverifiable (no ledger row)")
        fails = [e.iteration for e in run.failures]
        if fails:
            ax.scatter(fails, [0.0] * len(fails), color="black", marker="|", s=60, label="failed, log only")
        ax.set_title(f"{run.name} ({run.framework or '?'})", fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("combined_score")
        legends.append((ax, *ax.get_legend_handles_labels(), []))
        ax.grid(alpha=0.3)
    _save(fig, path, legends)
    plt.close(fig)


def plot_rejections(runs: list[Run], path: Path) -> None:
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(len(runs), 1, figsize=(7, 2.8 * len(runs)), squeeze=False)
    legends = []
    for ax, run in zip(axes[:, 0], runs):
        table = outcome_table(run)
        if not table:
            ax.text(0.5, 0.5, "no iterations", ha="center", transform=ax.transAxes)
            continue
        last = max(table)
        width = max(1, math.ceil(last / 20))
        bins = list(range(1, last + 1, width))
        kinds = sorted(set(table.values()), key=lambda k: (k != "ok", k.startswith("log:"), k))
        bottom = [0] * len(bins)
        reject_colors = ["tab:orange", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan",
                         "tab:blue", "gold", "navy"]
        log_colors = ["0.35", "0.55", "0.75", "0.15", "0.9"]
        n_reject = n_log = 0
        for kind in kinds:
            counts = [sum(1 for it, k in table.items() if k == kind and b <= it < b + width) for b in bins]
            if kind == "ok":
                color = "tab:green"
            elif kind.startswith("log:"):
                color, n_log = log_colors[n_log % len(log_colors)], n_log + 1
            else:
                color, n_reject = reject_colors[n_reject % len(reject_colors)], n_reject + 1
            # Centred on the bin's middle iteration: with bins of 1 each bar sits on its iteration's tick.
            ax.bar([b + (width - 1) / 2 for b in bins], counts, width=width * 0.9, bottom=bottom, color=color,
                   label=kind, align="center", hatch="//" if kind.startswith("log:") else None)
            bottom = [x + y for x, y in zip(bottom, counts)]
        ax2 = ax.twinx()
        its = sorted(table)
        valid_cum = [sum(1 for j in its[: k + 1] if table[j] == "ok") / (k + 1) for k in range(len(its))]
        ax2.plot(its, valid_cum, color="black", lw=1.2, label="cumulative validity rate")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("validity rate")
        ax.set_title(f"{run.name}: outcome of each iteration (bins of {width})", fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("iterations")
        if width == 1:
            ax.set_xticks(range(1, last + 1))  # one tick per bar
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        # One legend for both axes: the validity line lives on the twin axis.
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        legends.append((ax, h1 + h2, l1 + l2, [ax2]))
    _save(fig, path, legends)
    plt.close(fig)


def _tree_layout(programs: dict[str, Prog]) -> dict[str, tuple[float, float]]:
    children = defaultdict(list)
    roots = []
    for p in programs.values():
        (children[p.parent_id] if p.parent_id in programs else roots).append(p.id)
    for kids in children.values():
        kids.sort(key=lambda i: (programs[i].iteration, programs[i].timestamp))
    pos, counter = {}, [0]

    def place(pid, depth=0):
        kids = children.get(pid, [])
        if depth > 2000:
            kids = []
        if not kids:
            y = counter[0]
            counter[0] += 1
        else:
            ys = [place(k, depth + 1) for k in kids]
            y = sum(ys) / len(ys)
        pos[pid] = (programs[pid].iteration, y)
        return y

    for r in sorted(roots, key=lambda i: programs[i].iteration):
        place(r)
    return pos


def plot_lineage(run: Run, best_ids: set[str], path: Path) -> bool:
    plt = _plt()
    progs = run.programs
    if not progs:
        return False
    pos = _tree_layout(progs)
    height = min(12, 1.5 + 0.18 * max(1, max(y for _, y in pos.values()) + 1))
    fig, ax = plt.subplots(figsize=(7, height))
    for p in progs.values():
        if p.parent_id in pos:
            (x0, y0), (x1, y1) = pos[p.parent_id], pos[p.id]
            ax.plot([x0, x0, x1], [y0, y1, y1], color="0.7", lw=0.8, zorder=1)
    valid = [p for p in progs.values() if p.valid and p.verified]
    beside = []
    scores = [p.score for p in valid]
    if valid:
        sc = ax.scatter([pos[p.id][0] for p in valid], [pos[p.id][1] for p in valid], c=scores, cmap="viridis",
                        s=30, zorder=2, edgecolors="k", linewidths=0.3, label="valid (colour: combined_score)")
        beside.append(fig.colorbar(sc, ax=ax, label="combined_score (valid)", fraction=0.04).ax)
    unver = [p for p in progs.values() if not p.verified]
    if unver:
        ax.scatter([pos[p.id][0] for p in unver], [pos[p.id][1] for p in unver], color="grey", marker="^", s=30,
                   zorder=2, label="unverifiable (no ledger row)")
    bad = [p for p in progs.values() if not p.valid and p.verified]
    if bad:
        ax.scatter([pos[p.id][0] for p in bad], [pos[p.id][1] for p in bad], color="tab:red", marker="x", s=25,
                   zorder=2, label="rejected")
    best = [pid for pid in sorted(best_ids) if pid in pos]
    if best:
        ax.scatter([pos[pid][0] for pid in best], [pos[pid][1] for pid in best], marker="*", s=200, color="gold",
                   edgecolors="k", zorder=3, label="best of a fingerprint group")
    # Each node named by the start of its program id, as in the report's tables and text tree.
    for pid, (x, y) in pos.items():
        ax.annotate(pid[:6], (x, y), xytext=(4, 3), textcoords="offset points", fontsize=6, color="0.25", zorder=4)
    ax.set_yticks([])
    ax.set_xlabel("iteration found")
    ax.set_title(f"{run.name}: lineage (parent -> child; node label = program id)", fontsize=9)
    ax.margins(x=0.08)
    _save(fig, path, [(ax, *ax.get_legend_handles_labels(), beside)])
    plt.close(fig)
    return True


def plot_early_vs_final(run: Run, results: dict[str, dict], path: Path) -> bool:
    plt = _plt()
    drawn, steps = False, set()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, (fp, res) in enumerate(sorted(results.items())):
        pts = res["points"]
        if not pts:
            continue
        drawn = True
        rho = (f", rho {res['rho']:.2f}, p {format_p(res['p'])}" if res.get("rho") is not None
               else ", too few points")
        ax.scatter([p["early"] for p in pts], [p["final"] for p in pts], s=20,
                   label=f"fp {short(fp)} (n={len(pts)}{rho})")
        steps.update(res.get("early_steps") or [])
    if len(steps) == 1:
        step = f"step {next(iter(steps))}"
    else:
        step = f"steps {', '.join(map(str, sorted(steps)))}" if steps else "step unknown"
    ax.set_xlabel(f"early_val_loss (largest rung, training {step})")
    ax.set_ylabel("final objective (lower is better)")
    ax.set_title(f"{run.name}: early vs final (one point per distinct block)", fontsize=9)
    ax.grid(alpha=0.3)
    if drawn:
        _save(fig, path, [(ax, *ax.get_legend_handles_labels(), [])])
    plt.close(fig)
    return drawn
