"""The seeded simulation study of §3 (Table 1, Appendix B Tables 7–9): many trials of eq. (5), per row.

A :class:`GaussianStudy` names the setting (d, |mu|^2, eps, angle, sigma; :mod:`core.simulation.gaussian`)
and the rows to produce: estimators from real samples only, and eq. (5) fed with ``n_syn`` synthetic samples
of one Proposition-1 family at each scale c. :func:`run_gaussian_study` simulates the trials vectorised and
returns one :class:`ResultRow` (mean and standard deviation of eqs. 6 and 7) per row.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from core.progress import ProgressEvent, ProgressFn, Stage
from core.simulation.gaussian import (
    DIRECTIONS,
    Direction,
    batch_accuracies,
    check_eps,
    check_sigma,
    make_mu,
    synthetic_mean,
)

logger = logging.getLogger(__name__)

# Elements (float64) held at once per block when drawing synthetic samples: 4e6 * 8 bytes = 32 MB.
_BLOCK_ELEMENTS = 4_000_000
# Trials simulated together (vectorised); randomness is per trial, so the split does not change results.
_TRIAL_CHUNK = 64


def _positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class GaussianStudy:
    """One simulation study: the setting of §3.1 plus the rows to produce. Defaults: Table 1, d = 2."""

    dim: int = 2
    mu_norm_sq: float = 2.0
    eps: float = 0.5
    angle_deg: float = 0.0
    sigma: float = 1.0
    n_real: int = 10  # real samples behind every synthetic row (theta_inter and the real half of eq. 5)
    real_sizes: tuple[int, ...] = (10, 100)  # one "real" row per size: theta from n real samples only
    n_syn: tuple[int, ...] = (10, 100)
    c: tuple[float, ...] = (0.5, 1.0, 1.5)
    direction: Direction = "clean"
    trials: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        _positive_int("dim", self.dim)
        _positive_int("n_real", self.n_real)
        _positive_int("trials", self.trials)
        _positive_int("seed", self.seed, minimum=0)
        check_eps(self.eps)
        check_sigma(self.sigma)
        make_mu(self.dim, self.mu_norm_sq, self.angle_deg)  # validates mu_norm_sq and angle_deg
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        object.__setattr__(self, "real_sizes", tuple(_positive_int("real size", n) for n in self.real_sizes))
        object.__setattr__(self, "n_syn", tuple(_positive_int("n_syn", n, minimum=0) for n in self.n_syn))
        cs = tuple(float(c) for c in self.c)
        for c in cs:
            if not math.isfinite(c) or c < 0:
                raise ValueError(f"c must be a non-negative finite number, got {c!r}")
        object.__setattr__(self, "c", cs)
        if not self.n_syn or not self.c:
            raise ValueError(f"need at least one n_syn and one c, got n_syn={self.n_syn} and c={self.c}")
        if self.direction == "orthogonal" and self.dim == 1:
            raise ValueError("direction='orthogonal' needs dim >= 2")

    @property
    def mu(self) -> np.ndarray:
        return make_mu(self.dim, self.mu_norm_sq, self.angle_deg)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["real_sizes"] = list(self.real_sizes)
        out["n_syn"] = list(self.n_syn)
        out["c"] = list(self.c)
        return out


@dataclass(frozen=True)
class ResultRow:
    """Mean and standard deviation (over trials, ddof=1) of the accuracies (6) and (7) of one estimator.

    ``source="real"``: theta_inter from ``n_real`` real samples (c, n_syn and direction are None).
    ``source="synthetic"``: theta_final of eq. (5) from ``n_real`` real and ``n_syn`` synthetic samples.
    """

    source: Literal["real", "synthetic"]
    c: float | None
    direction: Direction | None
    n_real: int
    n_syn: int | None
    acc_mean: float
    acc_std: float
    rob_mean: float
    rob_std: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _summary(values: np.ndarray) -> tuple[float, float]:
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return float(np.mean(values)), std


def _sample_blocks(
    sign_rngs: Sequence[np.random.Generator],
    noise_rngs: Sequence[np.random.Generator],
    total: int,
    dim: int,
    block: int,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (offset, signs (B, k), noise (B, k, d)) for B trials, ``block`` samples at a time.

    Each trial draws from its own generators in order, so block boundaries do not change the numbers and the
    first n samples are the same whatever ``total`` is (nested samples across requested sizes).
    """
    done = 0
    while done < total:
        k = min(block, total - done)
        signs = np.stack([np.where(r.random(k) < 0.5, -1.0, 1.0) for r in sign_rngs])
        noise = np.stack([r.standard_normal((k, dim)) for r in noise_rngs])
        yield done, signs, noise
        done += k


def _prefix_sums_at(
    running: np.ndarray,
    block_terms: np.ndarray,
    offset: int,
    sizes: Sequence[int],
    out: dict[int, np.ndarray],
) -> np.ndarray:
    """Add a block of per-sample terms (..., k, d) to the running sums (..., d); record the sum of the first n
    terms in ``out[n]`` for every requested n inside this block. Returns the new running sum."""
    k = block_terms.shape[-2]
    wanted = [n for n in sizes if offset < n <= offset + k]
    if wanted:
        cumulative = running[..., None, :] + np.cumsum(block_terms, axis=-2)  # (..., k, d)
        for n in wanted:
            out[n] = cumulative[..., n - offset - 1, :].copy()
    return running + block_terms.sum(axis=-2)


def run_gaussian_study(study: GaussianStudy, *, progress: ProgressFn | None = None) -> list[ResultRow]:
    """Simulate ``study.trials`` seeded trials and summarise eqs. (6)–(7) per row (real rows first).

    Randomness: trial t owns four generators spawned from ``SeedSequence(seed)`` (real labels, real noise,
    synthetic signs, synthetic noise). Within a trial every row uses common random numbers: the real rows and
    the real half of every synthetic row are prefixes of one real sample, and every c and n_syn uses prefixes
    of one synthetic noise sample (x~ = s c m + sigma z with the same s, z). Rows therefore differ only
    through n, c and n_syn, and a row does not change when other rows are added to the request.

    ``progress`` gets ``Stage.SIMULATE`` events, current/total counted in samples drawn.
    """
    mu = study.mu
    dim, sigma, eps = study.dim, study.sigma, study.eps
    means = np.stack([synthetic_mean(mu, direction=study.direction, c=c, eps=eps) for c in study.c])  # (C, d)
    n_c = means.shape[0]
    real_max = max((*study.real_sizes, study.n_real))
    syn_max = max(study.n_syn)
    real_needed = sorted({*study.real_sizes, study.n_real})
    syn_needed = sorted(n for n in set(study.n_syn) if n > 0)

    real_acc = np.empty((study.trials, len(study.real_sizes)))
    real_rob = np.empty_like(real_acc)
    syn_acc = np.empty((study.trials, n_c, len(study.n_syn)))
    syn_rob = np.empty_like(syn_acc)

    trial_seeds = np.random.SeedSequence(study.seed).spawn(study.trials)
    total_work = study.trials * (real_max + syn_max)
    done_work = 0
    for start in range(0, study.trials, _TRIAL_CHUNK):
        seeds = trial_seeds[start : start + _TRIAL_CHUNK]
        batch = len(seeds)
        streams = [[np.random.default_rng(s) for s in seq.spawn(4)] for seq in seeds]

        # Real data: sums of y_i x_i = mu + sigma y_i z_i over the first n samples.
        real_sums: dict[int, np.ndarray] = {}
        running = np.zeros((batch, dim))
        block = max(1, _BLOCK_ELEMENTS // (batch * dim))
        for offset, y, z in _sample_blocks(
            [s[0] for s in streams], [s[1] for s in streams], real_max, dim, block
        ):
            x = y[..., None] * mu + sigma * z  # (B, k, d)
            running = _prefix_sums_at(running, y[..., None] * x, offset, real_needed, real_sums)
            done_work += batch * y.shape[1]
            if progress is not None:
                progress(ProgressEvent(Stage.SIMULATE, done_work, total_work, message="real samples"))
        for j, n in enumerate(study.real_sizes):
            real_acc[start : start + batch, j], real_rob[start : start + batch, j] = batch_accuracies(
                real_sums[n] / n, mu, sigma=sigma, eps=eps
            )
        real_part = real_sums[study.n_real]  # (B, d)
        theta_inter = real_part / study.n_real  # (B, d)

        # Synthetic data for every c at once: x~ = s mu~_c + sigma z, pseudo-labelled by theta_inter.
        syn_sums: dict[int, np.ndarray] = {}
        running = np.zeros((batch, n_c, dim))
        block = max(1, _BLOCK_ELEMENTS // (batch * n_c * dim))
        for offset, s, z in _sample_blocks(
            [t[2] for t in streams], [t[3] for t in streams], syn_max, dim, block
        ):
            x_syn = s[:, None, :, None] * means[None, :, None, :] + sigma * z[:, None]  # (B, C, k, d)
            scores = np.einsum("bckd,bd->bck", x_syn, theta_inter)
            pseudo = np.where(scores >= 0, 1.0, -1.0)  # (B, C, k)
            running = _prefix_sums_at(running, pseudo[..., None] * x_syn, offset, syn_needed, syn_sums)
            done_work += batch * s.shape[1]
            if progress is not None:
                progress(ProgressEvent(Stage.SIMULATE, done_work, total_work, message="synthetic samples"))
        for j, n in enumerate(study.n_syn):
            syn_part = syn_sums[n] if n > 0 else np.zeros((batch, n_c, dim))
            theta_final = (real_part[:, None, :] + syn_part) / (study.n_real + n)  # (B, C, d), eq. (5)
            syn_acc[start : start + batch, :, j], syn_rob[start : start + batch, :, j] = batch_accuracies(
                theta_final, mu, sigma=sigma, eps=eps
            )

    rows: list[ResultRow] = []
    for j, n in enumerate(study.real_sizes):
        acc_mean, acc_std = _summary(real_acc[:, j])
        rob_mean, rob_std = _summary(real_rob[:, j])
        rows.append(ResultRow("real", None, None, n, None, acc_mean, acc_std, rob_mean, rob_std))
    for i, c in enumerate(study.c):
        for j, n in enumerate(study.n_syn):
            acc_mean, acc_std = _summary(syn_acc[:, i, j])
            rob_mean, rob_std = _summary(syn_rob[:, i, j])
            rows.append(
                ResultRow(
                    "synthetic", c, study.direction, study.n_real, n, acc_mean, acc_std, rob_mean, rob_std
                )
            )
    logger.debug("gaussian study %s: %d rows", study, len(rows))
    return rows
