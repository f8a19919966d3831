"""Figures for the Gaussian study (PNG through matplotlib's Agg canvas; no pyplot global state).

* :func:`plot_curves`: accuracy (eq. 6) and robust accuracy (eq. 7) against n_syn, one line per c, with the
  real baselines and the population optima as horizontal references.
* :func:`plot_proposition1`: the picture of Proposition 1 / Figure 1 in d = 2: the two real classes, samples
  of the three synthetic families (clean, robust, orthogonal) and the decision boundaries they lead to.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from core.simulation.gaussian import (
    DIRECTIONS,
    closed_form_robust_accuracy,
    optimal_accuracies,
    optimal_robust_direction,
    sample_mixture,
    self_training,
    standard_accuracy,
    synthetic_mean,
)
from core.simulation.study import GaussianStudy, ResultRow


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=90)
    return path


def plot_curves(rows: Sequence[ResultRow], study: GaussianStudy, path: Path) -> Path:
    """Accuracy and robust accuracy (mean +- std over trials) against n_syn for each c; returns ``path``."""
    synthetic = [r for r in rows if r.source == "synthetic"]
    real = [r for r in rows if r.source == "real"]
    if not synthetic:
        raise ValueError("plot_curves needs at least one synthetic row")
    best_clean, best_robust = optimal_accuracies(study.mu, sigma=study.sigma, eps=study.eps)
    fig = Figure(figsize=(9.0, 3.6))
    axes = fig.subplots(1, 2)
    colours = {c: f"C{i}" for i, c in enumerate(sorted({r.c for r in synthetic if r.c is not None}))}
    for ax, key, best, title in (
        (axes[0], "acc", best_clean, "accuracy, eq. (6)"),
        (axes[1], "rob", best_robust, f"robust accuracy, eq. (7), eps={study.eps:g}"),
    ):
        for c, colour in colours.items():
            series = sorted((r for r in synthetic if r.c == c), key=lambda r: r.n_syn or 0)
            xs = [r.n_syn for r in series]
            means = np.array([getattr(r, f"{key}_mean") for r in series])
            stds = np.array([getattr(r, f"{key}_std") for r in series])
            ax.errorbar(xs, means, yerr=stds, marker="o", ms=3, capsize=2, color=colour, label=f"c={c:g}")
        for i, r in enumerate(real):
            ax.axhline(
                getattr(r, f"{key}_mean"),
                color="0.4",
                lw=0.8,
                ls=(0, (4, 2 + 2 * i)),
                label=f"real n={r.n_real}",
            )
        ax.axhline(best, color="k", lw=0.8, ls=":", label="population optimum")
        if max(r.n_syn or 0 for r in synthetic) / max(1, min(r.n_syn or 1 for r in synthetic)) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel("n_syn (synthetic samples)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"{study.direction} family, d={study.dim}, |mu|^2={study.mu_norm_sq:g}, "
        f"angle={study.angle_deg:g} deg, "
        f"n_real={study.n_real}, {study.trials} trials",
        fontsize=9,
    )
    fig.tight_layout()
    return _save(fig, path)


def _boundary(ax: Axes, theta: np.ndarray, extent: float, **kwargs: object) -> None:
    """Draw the line theta^T x = 0 across the square [-extent, extent]^2."""
    normal = theta / np.linalg.norm(theta)
    along = np.array([-normal[1], normal[0]]) * extent * 1.5
    ax.plot([-along[0], along[0]], [-along[1], along[1]], **kwargs)


def plot_proposition1(
    study: GaussianStudy, path: Path, *, c: float | None = None, n_show: int = 60, n_syn: int | None = None
) -> Path:
    """Proposition 1 in d = 2: one panel per synthetic family (clean, robust, orthogonal).

    Each panel shows n_show real samples per class, n_show synthetic samples coloured by their pseudo-label,
    the Bayes boundary mu^T x = 0, the robust-optimal boundary theta*^T x = 0, and the boundary theta_final of
    eq. (5) learned from ``study.n_real`` real and ``n_syn`` (default: the largest of the study) synthetic
    samples, with its accuracies (6)/(7) in the title. One seeded draw, for illustration only.
    """
    if study.dim != 2:
        raise ValueError(f"the Proposition 1 picture needs dim=2, got dim={study.dim}")
    c = max(study.c) if c is None else c
    n_syn = max(study.n_syn) if n_syn is None else n_syn
    mu, eps, sigma = study.mu, study.eps, study.sigma
    rng = np.random.default_rng(study.seed)
    x_real, y_real = sample_mixture(mu, study.n_real, sigma=sigma, rng=rng)
    x_show, y_show = sample_mixture(mu, 2 * n_show, sigma=sigma, rng=rng)
    noise = rng.standard_normal((max(n_syn, n_show), 2))
    signs = np.where(rng.random(max(n_syn, n_show)) < 0.5, -1.0, 1.0)
    try:
        theta_star: np.ndarray | None = optimal_robust_direction(mu, eps)
    except ValueError:
        theta_star = None

    extent = float(np.abs(mu).max() * max(1.0, c) + 3 * sigma)
    fig = Figure(figsize=(10.5, 3.8))
    axes = fig.subplots(1, 3)
    for ax, direction in zip(axes, DIRECTIONS, strict=True):
        mean = synthetic_mean(mu, direction=direction, c=c, eps=eps)
        x_syn = signs[:, None] * mean + sigma * noise
        fit = self_training(x_real, y_real, x_syn[:n_syn])
        shown = x_syn[:n_show]
        shown_labels = np.where(shown @ fit.theta_inter >= 0, 1.0, -1.0)
        for label, colour in ((1.0, "C0"), (-1.0, "C3")):
            pts = x_show[y_show == label]
            ax.scatter(pts[:, 0], pts[:, 1], s=6, color=colour, alpha=0.35, lw=0)
            syn = shown[shown_labels == label]
            ax.scatter(syn[:, 0], syn[:, 1], s=14, marker="x", color=colour, lw=0.8)
        ax.annotate("", xy=mu, xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "k"})
        ax.annotate("", xy=mean, xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "C2", "lw": 1.5})
        _boundary(ax, mu, extent, color="k", lw=1.0, label="Bayes: mu^T x = 0")
        if theta_star is not None:
            _boundary(ax, theta_star, extent, color="0.5", lw=1.0, ls="--", label="robust optimum theta*")
        if np.any(fit.theta_final):
            _boundary(ax, fit.theta_final, extent, color="C2", lw=1.5, label="learned theta_final (eq. 5)")
            acc = standard_accuracy(fit.theta_final, mu, sigma=sigma)
            rob = closed_form_robust_accuracy(fit.theta_final, mu, sigma=sigma, eps=eps)
            scores = f"acc {acc:.3f}, rob {rob:.3f}"
        else:
            scores = "theta_final = 0"
        ax.set_title(f"{direction}: mu~ (green arrow), c={c:g}\n{scores}", fontsize=8)
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6, loc="lower right")
    fig.suptitle(
        f"Proposition 1, d=2, |mu|^2={study.mu_norm_sq:g}, eps={eps:g}, angle={study.angle_deg:g} deg: "
        f"dots real, crosses synthetic (colour = pseudo-label); n_real={study.n_real}, n_syn={n_syn}",
        fontsize=8,
    )
    fig.tight_layout()
    return _save(fig, path)
