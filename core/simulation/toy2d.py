"""Contrastive-DP on a 2-D Gaussian mixture: the paper's Fig. 2-4 and its central claim, measured.

Setting (paper §3.1 with d = 2, Table 1): y uniform on {-1, +1}, x | y ~ N(y mu, sigma^2 I), mu = (1, 1)
(|mu|^2 = 2, angle 0 to 1_d), sigma = 1, l_inf budget eps = 0.5.

1. An epsilon-model for the mixture: a small MLP trained with the DDPM objective (seconds on a CPU), or the
   exact optimal denoiser of the mixture (``model="exact"``; closed form, no training error); the networks
   are in :mod:`core.simulation.toy2d_models`.
2. Vanilla DDIM and contrastive-guided DDIM (``core.diffusion.sample`` + ``core.contrastive.
   ContrastiveGuidance``) from the SAME x_T.
3. Metrics of each synthetic set: per-class spread, distance between class means, the implied scale
   c = <m_+ - m_-, mu> / (2 |mu|^2) of Proposition 1, a centroid separability margin; and the closed-form
   accuracy / robust accuracy (eqs. 6, 7) of the self-training estimator of eq. 5 fed with the set (n_real
   real samples + the synthetic set), averaged over ``real_trials`` draws of the real samples
   (``core.simulation.gaussian``).

Feature map for the guidance. The loss works on L2-normalised embeddings, so f = identity would only see
the *angle* of a 2-D point. The default is instead a small fixed map: random Fourier features
f(x) = sqrt(2/k) cos(W x + b), W ~ N(0, I / bandwidth^2), b ~ U[0, 2 pi) (k = 64). Their inner product
approximates the Gaussian kernel exp(-|x - x'|^2 / (2 bandwidth^2)), so the contrastive loss becomes a
kernel repulsion between samples in the plane - the analogue of "feature distance" for images. The identity
(angular) map is available as ``features="identity"``.

Geometric metrics group samples by the Bayes labels sign(mu^T x) (a measurement choice); the eq.-5 estimator
uses its own pseudo-labels sign(theta_inter^T x) as in the paper.

The figures of a run are drawn by :mod:`core.simulation.toy2d_plots`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core import options
from core.contrastive import (
    ContrastiveGuidance,
    LossName,
    Strategy,
    batch_contrastive_loss,
    check_guidance_args,
)
from core.diffusion import ddim_timesteps, sample
from core.options import FeatureOn, GenLoss, Schedule, ToyFeatures, ToyLabels, ToyModel, check_choice
from core.progress import ProgressEvent, ProgressFn, Stage
from core.simulation.gaussian import (
    closed_form_robust_accuracy,
    sample_mixture,
    self_training,
    standard_accuracy,
)
from core.simulation.toy2d_models import ExactMixtureEps, ToyEpsMLP

log = logging.getLogger(__name__)

ToyLoss = GenLoss  # the toy's names come from core.options; its defaults (a toy's scale) stay here


@dataclass(frozen=True, kw_only=True)
class Toy2DConfig:
    """Everything that defines one toy run except the guidance itself."""

    mu: tuple[float, float] = (1.0, 1.0)
    sigma: float = 1.0
    eps: float = 0.5
    num_train_timesteps: int = 1000
    steps: int = 50
    schedule: Schedule = "uniform"
    init_scale: float = 1.0  # x_T ~ N(0, init_scale^2 I) (paper Fig. 3: 1, Fig. 4: 2)
    model: ToyModel = "mlp"
    train_steps: int = 1000
    hidden: int = 64
    features: ToyFeatures = "rff"
    rff_dim: int = 64
    rff_bandwidth: float = 1.0
    labels: ToyLabels = "pseudo"  # class_conditional labels: sign(theta_inter^T x0_hat) or sign(mu^T x0_hat)
    n_real: int = 10
    real_trials: int = 50

    def __post_init__(self) -> None:
        if len(self.mu) != 2 or not all(math.isfinite(v) for v in self.mu) or not any(self.mu):
            raise ValueError(f"mu must be a non-zero finite 2-vector, got {self.mu!r}")
        for name in ("sigma", "init_scale", "rff_bandwidth"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not math.isfinite(self.eps) or self.eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        ints = ("num_train_timesteps", "steps", "train_steps", "hidden", "rff_dim", "n_real", "real_trials")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        check_choice("model", self.model, options.TOY_MODELS)
        check_choice("features", self.features, options.TOY_FEATURES)
        check_choice("labels", self.labels, options.TOY_LABELS)
        check_choice("schedule", self.schedule, options.SCHEDULES)

    def alphas_cumprod(self) -> Tensor:
        """Linear betas 1e-4 .. 0.02 over T steps, scaled like DDPM's for other T (float64)."""
        t = self.num_train_timesteps
        betas = torch.linspace(1e-4 * 1000 / t, 0.02 * 1000 / t, t, dtype=torch.float64).clamp(max=0.999)
        return torch.cumprod(1.0 - betas, dim=0)


@dataclass(frozen=True, kw_only=True)
class GuidanceSettings:
    """The guidance of one toy run (``loss="none"`` or ``lam=0`` = vanilla only)."""

    loss: ToyLoss = "hnm"
    strategy: Strategy = "previous"
    lam: float = 100.0
    tau: float = 0.5
    tau_plus: float = 0.1
    beta: float = 1.0
    window: tuple[int, int] | None = None
    embedding_head: bool = False
    feature_on: FeatureOn = options.FEATURE_ON_DEFAULT

    def __post_init__(self) -> None:
        check_choice("loss", self.loss, options.GEN_LOSSES)
        check_choice("feature_on", self.feature_on, options.FEATURE_ON)
        check_guidance_args(
            loss="hnm" if self.loss == "none" else self.loss, lam=self.lam, tau=self.tau,
            tau_plus=self.tau_plus, beta=self.beta, strategy=self.strategy,
        )


# ----------------------------------------------------------------------------------------------------------
# Epsilon models
# ----------------------------------------------------------------------------------------------------------


def train_toy_eps_model(
    config: Toy2DConfig, *, seed: int, progress: ProgressFn | None = None
) -> ToyEpsMLP:
    """Fit ToyEpsMLP with the DDPM loss E |eps - eps_theta(sqrt(a) x0 + sqrt(1-a) eps, t)|^2 (CPU)."""
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # nn.Linear's default initialisation
    model = ToyEpsMLP(hidden=config.hidden, num_train_timesteps=config.num_train_timesteps)
    torch.random.set_rng_state(torch_state)
    alphas = config.alphas_cumprod().float()
    mu = torch.tensor(config.mu, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.train_steps, eta_min=1e-4)
    batch = 1024
    model.train()
    for step in range(config.train_steps):
        y = torch.where(torch.rand(batch, generator=gen) < 0.5, -1.0, 1.0)
        x0 = y[:, None] * mu + config.sigma * torch.randn(batch, 2, generator=gen)
        t = torch.randint(config.num_train_timesteps, (batch,), generator=gen)
        noise = torch.randn(batch, 2, generator=gen)
        a = alphas[t][:, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = ((model(x_t, t) - noise) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and (step + 1) % 100 == 0:
            progress(ProgressEvent(Stage.TRAIN, step + 1, config.train_steps,
                                   metrics={"loss": float(loss)}))
    return model.eval()


def build_eps_model(config: Toy2DConfig, *, seed: int, progress: ProgressFn | None = None) -> nn.Module:
    if config.model == "exact":
        mu = torch.tensor(config.mu, dtype=torch.float64)
        return ExactMixtureEps(mu, sigma=config.sigma, alphas_cumprod=config.alphas_cumprod())
    return train_toy_eps_model(config, seed=seed, progress=progress)


# ----------------------------------------------------------------------------------------------------------
# Feature maps and metrics
# ----------------------------------------------------------------------------------------------------------


def toy_feature_map(config: Toy2DConfig, *, generator: torch.Generator) -> Callable[[Tensor], Tensor]:
    """The fixed feature map f of the module docstring (random Fourier features or the identity)."""
    if config.features == "identity":
        return lambda x: x
    w = torch.randn(2, config.rff_dim, generator=generator) / config.rff_bandwidth
    b = torch.rand(config.rff_dim, generator=generator) * 2 * math.pi
    scale = math.sqrt(2.0 / config.rff_dim)

    def rff(x: Tensor) -> Tensor:
        return scale * torch.cos(x @ w.to(x.device, x.dtype) + b.to(x.device, x.dtype))

    return rff


def set_metrics(
    x_syn: np.ndarray, config: Toy2DConfig, *, real_sets: list[tuple[np.ndarray, np.ndarray]]
) -> dict[str, float]:
    """Geometry of a synthetic set and what it does for the eq.-5 estimator (see module docstring)."""
    mu = np.asarray(config.mu, dtype=np.float64)
    x = np.asarray(x_syn, dtype=np.float64)
    y = np.where(x @ mu >= 0, 1.0, -1.0)
    pos, neg = x[y > 0], x[y < 0]
    m_pos = pos.mean(0) if len(pos) else np.full(2, np.nan)
    m_neg = neg.mean(0) if len(neg) else np.full(2, np.nan)
    spreads = [np.sqrt(((p - p.mean(0)) ** 2).sum(1)).mean() if len(p) > 1 else np.nan for p in (pos, neg)]
    spread = float(np.nanmean(spreads))
    d_own = np.where(y[:, None] > 0, np.linalg.norm(x - m_pos, axis=1)[:, None],
                     np.linalg.norm(x - m_neg, axis=1)[:, None])[:, 0]
    d_other = np.where(y > 0, np.linalg.norm(x - m_neg, axis=1), np.linalg.norm(x - m_pos, axis=1))
    margin = float(np.mean((d_other - d_own) / np.maximum(d_other + d_own, 1e-12)))
    acc, rob, acc0, rob0 = [], [], [], []
    for x_real, y_real in real_sets:
        res = self_training(x_real, y_real, x)
        acc.append(standard_accuracy(res.theta_final, mu, sigma=config.sigma))
        rob.append(closed_form_robust_accuracy(res.theta_final, mu, sigma=config.sigma, eps=config.eps))
        acc0.append(standard_accuracy(res.theta_inter, mu, sigma=config.sigma))
        rob0.append(closed_form_robust_accuracy(res.theta_inter, mu, sigma=config.sigma, eps=config.eps))
    return {
        "class_fraction_pos": float((y > 0).mean()),
        "spread": spread,
        "mean_distance": float(np.linalg.norm(m_pos - m_neg)),
        "c_hat": float((m_pos - m_neg) @ mu / (2 * mu @ mu)),
        "separability": margin,
        "accuracy": float(np.mean(acc)),
        "robust_accuracy": float(np.mean(rob)),
        "accuracy_std": float(np.std(acc)),
        "robust_accuracy_std": float(np.std(rob)),
        "real_only_accuracy": float(np.mean(acc0)),
        "real_only_robust_accuracy": float(np.mean(rob0)),
    }


# ----------------------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Toy2DResult:
    config: Toy2DConfig
    guidance: GuidanceSettings
    seed: int
    n: int
    vanilla: np.ndarray  # n x 2
    guided: np.ndarray | None  # n x 2 (None when no guidance)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # "data" / "vanilla" / "guided"
    guidance_loss: list[float] = field(default_factory=list)  # per guided step

    def to_dict(self) -> dict[str, Any]:
        g = asdict(self.guidance)
        g["window"] = list(self.guidance.window) if self.guidance.window is not None else None
        c = asdict(self.config)
        c["mu"] = list(self.config.mu)
        return {"seed": self.seed, "n": self.n, "config": c, "guidance": g, "metrics": self.metrics}


def _seeds(seed: int, n: int) -> list[int]:
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n, dtype=np.uint32)]


def run_toy2d(
    config: Toy2DConfig,
    guidance: GuidanceSettings,
    *,
    seed: int,
    n: int,
    model: nn.Module | None = None,
    progress: ProgressFn | None = None,
) -> Toy2DResult:
    """Vanilla and guided DDIM from the same x_T; metrics for both and for real data of the same size."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    s_model, s_noise, s_feat, s_real, s_data, s_guid = _seeds(seed, 6)
    eps_model = model if model is not None else build_eps_model(config, seed=s_model, progress=progress)
    alphas = config.alphas_cumprod()
    ts = ddim_timesteps(config.num_train_timesteps, config.steps, config.schedule)
    x_T = config.init_scale * torch.randn(n, 2, generator=torch.Generator().manual_seed(s_noise))
    mu = np.asarray(config.mu, dtype=np.float64)
    rng_real = np.random.default_rng(s_real)
    real_sets = [sample_mixture(mu, config.n_real, sigma=config.sigma, rng=rng_real)
                 for _ in range(config.real_trials)]
    data, _ = sample_mixture(mu, n, sigma=config.sigma, rng=np.random.default_rng(s_data))

    def cb(step: int, total: int) -> None:
        if progress is not None:
            progress(ProgressEvent(Stage.SAMPLING, step, total))

    vanilla = sample(eps_model, x_T, alphas_cumprod=alphas, timesteps=ts, callback=cb)
    result = Toy2DResult(
        config=config, guidance=guidance, seed=seed, n=n, vanilla=vanilla.numpy(), guided=None
    )
    result.metrics["data"] = set_metrics(data, config, real_sets=real_sets)
    result.metrics["vanilla"] = set_metrics(result.vanilla, config, real_sets=real_sets)
    if guidance.loss == "none" or guidance.lam == 0:
        return result
    feature_fn = toy_feature_map(config, generator=torch.Generator().manual_seed(s_feat))
    theta_inter = torch.tensor(real_sets[0][1] @ real_sets[0][0] / config.n_real, dtype=torch.float32)
    label_vec = torch.tensor(mu, dtype=torch.float32) if config.labels == "oracle" else theta_inter
    real = torch.from_numpy(sample_mixture(mu, max(n, 256), sigma=config.sigma,
                                           rng=np.random.default_rng(s_data + 1))[0]).float()
    guide = ContrastiveGuidance(
        feature_fn, loss=guidance.loss, lam=guidance.lam, tau=guidance.tau, tau_plus=guidance.tau_plus,
        beta=guidance.beta, strategy=guidance.strategy, window=guidance.window,
        feature_on=guidance.feature_on, real=real, label_fn=lambda x: (x @ label_vec >= 0).long(),
        embedding_head=guidance.embedding_head, head_hidden=32, head_dim=16,
        generator=torch.Generator().manual_seed(s_guid),
    )
    guided = sample(eps_model, x_T, alphas_cumprod=alphas, timesteps=ts, guidance=guide, callback=cb)
    result.guided = guided.numpy()
    result.guidance_loss = [h.loss for h in guide.history]
    result.metrics["guided"] = set_metrics(result.guided, config, real_sets=real_sets)
    loss_name: LossName = guidance.loss  # type: ignore[assignment]
    for name, xs in (("vanilla", vanilla), ("guided", guided)):
        with torch.no_grad():
            result.metrics[name]["batch_contrastive_loss"] = float(
                batch_contrastive_loss(feature_fn(xs), loss=loss_name, tau=guidance.tau,
                                       tau_plus=guidance.tau_plus, beta=guidance.beta)
            )
    return result
