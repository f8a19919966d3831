"""Figures of the 2-D toy (:mod:`core.simulation.toy2d`): vanilla vs guided samples from the same x_T.

Each panel colours samples by the Bayes label sign(mu^T x) and draws the Bayes boundary mu^T x = 0 dashed.
matplotlib is imported inside the functions, so the toy itself runs without it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from core.simulation.toy2d import Toy2DResult


def _draw_panel(ax: Any, name: str, x: np.ndarray, mu: np.ndarray, *, lim: float, small: bool) -> None:
    """One scatter panel: samples coloured by the Bayes label sign(mu.x), the Bayes boundary dashed."""
    y = x @ mu >= 0
    size = 2 if small else 3
    ax.scatter(x[y, 0], x[y, 1], s=size, alpha=0.5, color="tab:red")
    ax.scatter(x[~y, 0], x[~y, 1], s=size, alpha=0.5, color="tab:blue")
    ax.plot([-lim * mu[1], lim * mu[1]], [lim * mu[0], -lim * mu[0]], "k--", lw=0.6 if small else 0.7)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(name, fontsize=7 if small else 8)
    ax.tick_params(labelsize=5 if small else 6)


def plot_toy2d(result: Toy2DResult, path: Path, *, title: str | None = None) -> Path:
    """Scatter of vanilla vs guided samples (same x_T) with the Bayes boundary mu^T x = 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("vanilla DDIM", result.vanilla)]
    if result.guided is not None:
        g = result.guidance
        panels.append((f"{g.loss}, {g.strategy}, lam={g.lam:g}", result.guided))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    mu = np.asarray(result.config.mu)
    lim = 5.0
    for ax, (name, x) in zip(axes[0], panels, strict=True):
        _draw_panel(ax, name, x, mu, lim=lim, small=False)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_toy2d_grid(results: list[Toy2DResult], path: Path, *, columns: int = 4) -> Path:
    """Vanilla (first panel) and the guided set of each result (all from the same x_T) in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, np.ndarray]] = [("vanilla DDIM", results[0].vanilla)]
    for r in results:
        if r.guided is not None:
            g = r.guidance
            head = "+head" if g.embedding_head else ""
            panels.append((f"{g.loss}{head}, {g.strategy}, lam={g.lam:g}", r.guided))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.4 * rows), squeeze=False)
    mu = np.asarray(results[0].config.mu)
    lim = 5.0
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (name, x) in zip(axes.flat, panels, strict=False):
        _draw_panel(ax, name, x, mu, lim=lim, small=True)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
