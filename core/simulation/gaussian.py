"""The Gaussian theory of the paper (§3, Appendices A–B): closed-form accuracies, the self-training estimator,
the synthetic families of Proposition 1 and a seeded experiment runner.

Setting (§3.1). Labels y are uniform on {-1, +1} and x | y ~ N(y mu, sigma^2 I_d). A linear classifier
f_theta(x) = sign(theta^T x) is scored by

* eq. (6), standard accuracy  1 - err_standard = Phi(mu^T theta / (sigma |theta|_2)),
* eq. (7), robust accuracy under l_inf perturbations of size eps
  1 - err_robust = Phi((mu^T theta - eps |theta|_1) / (sigma |theta|_2)),

where Phi is the standard normal CDF (the paper writes errors with Q = 1 - Phi). Both are exact population
values, not estimates from a test sample.

Self-training (eq. 5). From n labelled real samples theta_inter = (1/n) sum_i y_i x_i; it pseudo-labels the
synthetic samples, y~_j = sign(theta_inter^T x~_j); then
theta_final = (sum_i y_i x_i + sum_j y~_j x~_j) / (n + n~).

Synthetic families (Proposition 1). Synthetic features come from
0.5 N(mu~, sigma^2 I) + 0.5 N(-mu~, sigma^2 I):

* ``clean``      mu~ = c mu                 (Case 2: best for clean accuracy),
* ``robust``     mu~ = c (mu - eps 1_d)     (Case 3: best for robust accuracy when every mu_j > eps),
* ``orthogonal`` mu~ = c |mu| v with v a fixed unit vector orthogonal to mu (Case 1: useless for clean
  accuracy). v is the Gram–Schmidt residual of the first of 1_d/sqrt(d), e_1, e_2, ... that is not parallel to
  mu, so it lies in the plane of mu and 1_d whenever mu is not parallel to 1_d.

The mean mu (:func:`make_mu`) is fixed by d, |mu|^2 and the angle a between mu and 1_d:
mu = |mu| (cos a * 1_d / sqrt(d) + sin a * e_perp), e_perp = (e_1 - 1_d/d) / |e_1 - 1_d/d|.
For d = 2 this puts mu at 45 - a degrees from the x-axis; in d = 2 the other choice of e_perp is a reflection
and gives the same accuracies, while in larger d the choice matters (it decides which coordinates of mu fall
below eps).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np
from scipy.special import ndtr

from core.progress import ProgressEvent, ProgressFn, Stage

logger = logging.getLogger(__name__)

Direction = Literal["clean", "robust", "orthogonal"]
DIRECTIONS: tuple[str, ...] = get_args(Direction)

# Elements (float64) held at once per block when drawing synthetic samples: 4e6 * 8 bytes = 32 MB.
_BLOCK_ELEMENTS = 4_000_000
# Trials simulated together (vectorised); randomness is per trial, so the split does not change results.
_TRIAL_CHUNK = 64


# ----------------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------------


def _vector(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


def _pair(theta: Any, mu: Any) -> tuple[np.ndarray, np.ndarray]:
    theta_v, mu_v = _vector("theta", theta), _vector("mu", mu)
    if theta_v.shape != mu_v.shape:
        raise ValueError(f"theta has shape {theta_v.shape} but mu has shape {mu_v.shape}; they must match")
    if not np.any(theta_v):
        raise ValueError("theta must be non-zero, got the zero vector (it defines no decision boundary)")
    return theta_v, mu_v


def _check_sigma(sigma: float) -> float:
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    return float(sigma)


def _check_eps(eps: float) -> float:
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a non-negative finite number, got {eps!r}")
    return float(eps)


# ----------------------------------------------------------------------------------------------------------
# Closed forms (Appendix A.1)
# ----------------------------------------------------------------------------------------------------------


def standard_accuracy(theta: np.ndarray, mu: np.ndarray, *, sigma: float = 1.0) -> float:
    """Population accuracy of sign(theta^T x): Phi(mu^T theta / (sigma |theta|_2)), eq. (6)."""
    theta_v, mu_v = _pair(theta, mu)
    sigma = _check_sigma(sigma)
    return float(ndtr(mu_v @ theta_v / (sigma * np.linalg.norm(theta_v))))


def robust_accuracy(theta: np.ndarray, mu: np.ndarray, *, sigma: float = 1.0, eps: float) -> float:
    """Population accuracy of sign(theta^T x) under the worst l_inf perturbation of size eps, eq. (7):
    Phi((mu^T theta - eps |theta|_1) / (sigma |theta|_2))."""
    theta_v, mu_v = _pair(theta, mu)
    sigma, eps = _check_sigma(sigma), _check_eps(eps)
    margin = mu_v @ theta_v - eps * np.abs(theta_v).sum()
    return float(ndtr(margin / (sigma * np.linalg.norm(theta_v))))


def batch_accuracies(
    thetas: np.ndarray, mu: np.ndarray, *, sigma: float = 1.0, eps: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Eqs. (6) and (7) for many classifiers at once.

    ``thetas`` has shape (..., d); returns (standard, robust) accuracies of shape (...). A zero row raises.
    """
    mu_v = _vector("mu", mu)
    sigma, eps = _check_sigma(sigma), _check_eps(eps)
    thetas = np.asarray(thetas, dtype=np.float64)
    if thetas.ndim == 0 or thetas.shape[-1] != mu_v.shape[0]:
        raise ValueError(f"thetas must have shape (..., {mu_v.shape[0]}) to match mu, got {thetas.shape}")
    norms = np.linalg.norm(thetas, axis=-1)  # (...)
    if np.any(norms == 0):
        where = np.argwhere(norms == 0)[0].tolist()
        raise ValueError(f"thetas contains a zero vector at index {where}")
    projection = thetas @ mu_v  # (...)
    standard = ndtr(projection / (sigma * norms))
    robust = ndtr((projection - eps * np.abs(thetas).sum(axis=-1)) / (sigma * norms))
    return standard, robust


def empirical_accuracies(
    theta: np.ndarray, x: np.ndarray, y: np.ndarray, *, eps: float = 0.0
) -> tuple[float, float]:
    """Accuracy of sign(theta^T x) on a finite sample, clean and under the exact worst-case l_inf attack.

    For a linear classifier the worst perturbation of size eps is delta = -eps y sign(theta) (App. A.1),
    so the attacked margin is y theta^T x - eps |theta|_1. Used to check eqs. (6)–(7) by Monte Carlo.
    """
    theta_v = _vector("theta", theta)
    if not np.any(theta_v):
        raise ValueError("theta must be non-zero, got the zero vector")
    eps = _check_eps(eps)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != theta_v.shape[0] or y.shape != (x.shape[0],):
        raise ValueError(f"x must be (n, {theta_v.shape[0]}) and y (n,), got x {x.shape} and y {y.shape}")
    margin = y * (x @ theta_v)
    attacked = margin - eps * np.abs(theta_v).sum()
    return float(np.mean(margin > 0)), float(np.mean(attacked > 0))


def optimal_robust_direction(mu: np.ndarray, eps: float) -> np.ndarray:
    """The unit theta* = T_eps(mu) / |T_eps(mu)| that maximises eq. (7) (App. A.1, Deng et al. 2021).

    T_eps(mu)_j = sign(mu_j) max(|mu_j| - eps, 0). The paper calls T_eps "hard thresholding"; the formula it
    writes (and the one that is optimal here) is the soft-thresholding operator. When every |mu_j| > eps,
    theta* is parallel to mu - eps sign(mu).
    """
    mu_v = _vector("mu", mu)
    eps = _check_eps(eps)
    thresholded = np.sign(mu_v) * np.maximum(np.abs(mu_v) - eps, 0.0)
    norm = np.linalg.norm(thresholded)
    if norm == 0:
        raise ValueError(
            f"eps={eps} >= max |mu_j| = {np.abs(mu_v).max():.6g}: every linear classifier has robust "
            "accuracy <= 1/2 and no direction is optimal"
        )
    return thresholded / norm


def optimal_accuracies(mu: np.ndarray, *, sigma: float = 1.0, eps: float) -> tuple[float, float]:
    """The best clean accuracy Phi(|mu|/sigma) and the best robust accuracy (at theta*) any linear classifier
    through the origin can reach; the ceilings against which the simulated numbers should be read."""
    mu_v = _vector("mu", mu)
    sigma, eps = _check_sigma(sigma), _check_eps(eps)
    best_clean = float(ndtr(np.linalg.norm(mu_v) / sigma))
    try:
        best_robust = robust_accuracy(optimal_robust_direction(mu_v, eps), mu_v, sigma=sigma, eps=eps)
    except ValueError:
        best_robust = 0.5
    return best_clean, best_robust


# ----------------------------------------------------------------------------------------------------------
# Means: mu and the synthetic families of Proposition 1
# ----------------------------------------------------------------------------------------------------------


def make_mu(dim: int, mu_norm_sq: float, angle_deg: float) -> np.ndarray:
    """The class mean mu with |mu|^2 = mu_norm_sq at angle ``angle_deg`` (degrees, 0..180) from 1_d.

    mu = |mu| (cos a * 1_d/sqrt(d) + sin a * e_perp) with e_perp = (e_1 - 1_d/d)/|e_1 - 1_d/d| (see module
    docstring). Angle 0 gives mu = (|mu|/sqrt(d)) 1_d, the setting of the paper's Table 1.
    """
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if not math.isfinite(mu_norm_sq) or mu_norm_sq <= 0:
        raise ValueError(f"mu_norm_sq must be a positive finite number, got {mu_norm_sq!r}")
    if not math.isfinite(angle_deg) or not 0 <= angle_deg <= 180:
        raise ValueError(f"angle_deg must be in [0, 180] degrees, got {angle_deg!r}")
    dim = int(dim)
    ones_unit = np.full(dim, 1.0 / math.sqrt(dim))
    angle = math.radians(angle_deg)
    sin_a = 0.0 if angle_deg in (0, 180) else math.sin(angle)
    if sin_a != 0.0 and dim == 1:
        raise ValueError(f"angle_deg={angle_deg!r} needs dim >= 2: in one dimension mu is parallel to 1")
    direction = math.cos(angle) * ones_unit
    if sin_a != 0.0:
        e_perp = -np.full(dim, 1.0 / dim)
        e_perp[0] += 1.0
        direction = direction + sin_a * e_perp / np.linalg.norm(e_perp)
    return math.sqrt(mu_norm_sq) * direction / np.linalg.norm(direction)


def orthogonal_unit(mu: np.ndarray) -> np.ndarray:
    """A fixed unit vector orthogonal to mu: Gram–Schmidt of the first of 1_d/sqrt(d), e_1, ..., e_d that is
    not parallel to mu."""
    mu_v = _vector("mu", mu)
    if not np.any(mu_v):
        raise ValueError("mu must be non-zero")
    dim = mu_v.shape[0]
    if dim == 1:
        raise ValueError("no direction is orthogonal to mu in one dimension (dim=1)")
    mu_unit = mu_v / np.linalg.norm(mu_v)
    candidates = [np.full(dim, 1.0 / math.sqrt(dim))] + list(np.eye(dim))
    for candidate in candidates:
        residual = candidate - (candidate @ mu_unit) * mu_unit
        norm = np.linalg.norm(residual)
        if norm > 1e-8:
            return residual / norm
    raise AssertionError("unreachable: the standard basis spans R^d")  # pragma: no cover


def synthetic_mean(mu: np.ndarray, *, direction: Direction, c: float, eps: float) -> np.ndarray:
    """mu~ of the synthetic family ``direction`` with scale c >= 0 (Proposition 1, Cases 1–3)."""
    mu_v = _vector("mu", mu)
    eps = _check_eps(eps)
    if not math.isfinite(c) or c < 0:
        raise ValueError(f"c must be a non-negative finite number, got {c!r}")
    if direction == "clean":
        return c * mu_v
    if direction == "robust":
        return c * (mu_v - eps)
    if direction == "orthogonal":
        return c * np.linalg.norm(mu_v) * orthogonal_unit(mu_v)
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


# ----------------------------------------------------------------------------------------------------------
# Sampling and the self-training estimator (eq. 5)
# ----------------------------------------------------------------------------------------------------------


def sample_mixture(
    mean: np.ndarray, n: int, *, sigma: float = 1.0, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """n draws of (x, y): y uniform on {-1, +1}, x | y ~ N(y mean, sigma^2 I). Returns x (n, d), y (n,)."""
    mean_v = _vector("mean", mean)
    sigma = _check_sigma(sigma)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    y = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    x = y[:, None] * mean_v + sigma * rng.standard_normal((n, mean_v.shape[0]))
    return x, y


@dataclass(frozen=True)
class SelfTrainingResult:
    """The pieces of eq. (5)."""

    theta_inter: np.ndarray  # (d,) (1/n) sum y_i x_i from the real data
    pseudo_labels: np.ndarray  # (n~,) sign(theta_inter^T x~_j), ties -> +1
    theta_final: np.ndarray  # (d,) eq. (5) on real + pseudo-labelled synthetic data


def self_training(x_real: np.ndarray, y_real: np.ndarray, x_syn: np.ndarray) -> SelfTrainingResult:
    """The self-training estimator of §3.1 / eq. (5).

    theta_inter = (1/n) sum_i y_i x_i; y~_j = sign(theta_inter^T x~_j) (a tie, of probability zero, counts
    as +1);
    theta_final = (sum_i y_i x_i + sum_j y~_j x~_j) / (n + n~).
    """
    x_real = np.asarray(x_real, dtype=np.float64)
    y_real = np.asarray(y_real, dtype=np.float64)
    x_syn = np.asarray(x_syn, dtype=np.float64)
    if x_real.ndim != 2 or x_real.shape[0] == 0:
        raise ValueError(f"x_real must be (n, d) with n >= 1, got shape {x_real.shape}")
    if y_real.shape != (x_real.shape[0],):
        raise ValueError(f"y_real must have shape ({x_real.shape[0]},), got {y_real.shape}")
    if not np.all(np.isin(y_real, (-1.0, 1.0))):
        raise ValueError(f"y_real must hold labels in {{-1, +1}}, got values {np.unique(y_real).tolist()}")
    if x_syn.ndim != 2 or x_syn.shape[1] != x_real.shape[1]:
        raise ValueError(f"x_syn must be (n_syn, {x_real.shape[1]}), got shape {x_syn.shape}")
    real_sum = y_real @ x_real  # (d,)
    theta_inter = real_sum / x_real.shape[0]
    pseudo = np.where(x_syn @ theta_inter >= 0, 1.0, -1.0)
    theta_final = (real_sum + pseudo @ x_syn) / (x_real.shape[0] + x_syn.shape[0])
    return SelfTrainingResult(theta_inter=theta_inter, pseudo_labels=pseudo, theta_final=theta_final)


# ----------------------------------------------------------------------------------------------------------
# Experiment runner
# ----------------------------------------------------------------------------------------------------------


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
        _check_eps(self.eps)
        _check_sigma(self.sigma)
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
