"""The epsilon-networks of the 2-D toy (:mod:`core.simulation.toy2d`, which trains and picks them): a small
MLP for the DDPM loss, and the exact optimal denoiser of the two-Gaussian mixture.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ToyEpsMLP(nn.Module):
    """eps(x, t): MLP on [x, sin/cos embedding of t/T] with SiLU, three hidden layers."""

    def __init__(self, *, hidden: int = 64, num_train_timesteps: int = 1000, n_freq: int = 8) -> None:
        super().__init__()
        self.num_train_timesteps = num_train_timesteps
        self.register_buffer("freqs", (2.0 ** torch.arange(n_freq, dtype=torch.float32)) * math.pi)
        self.net = nn.Sequential(
            nn.Linear(2 + 2 * n_freq, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        s = (t.float() / self.num_train_timesteps)[:, None] * self.freqs[None, :]  # B x n_freq
        return self.net(torch.cat([x, torch.sin(s), torch.cos(s)], dim=1))


class ExactMixtureEps(nn.Module):
    """The optimal eps for 0.5 N(mu, s^2 I) + 0.5 N(-mu, s^2 I) under x_t = sqrt(a) x_0 + sqrt(1 - a) e.

    Per component k: x_t ~ N(sqrt(a) m_k, (a s^2 + 1 - a) I) and E[x_0 | x_t, k] = m_k + sqrt(a) s^2
    (x_t - sqrt(a) m_k) / (a s^2 + 1 - a); mixing with the posterior weights gives E[x_0 | x_t], and
    eps = (x_t - sqrt(a) E[x_0 | x_t]) / sqrt(1 - a).
    """

    def __init__(self, mu: Tensor, *, sigma: float, alphas_cumprod: Tensor) -> None:
        super().__init__()
        self.register_buffer("mu", mu.double())
        self.sigma = sigma
        self.register_buffer("alphas", alphas_cumprod.double())

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        a = self.alphas[t.long()][:, None]  # B x 1
        xd = x.double()
        var = a * self.sigma**2 + 1.0 - a
        means = torch.stack([self.mu, -self.mu])  # 2 x 2
        centred = xd[:, None, :] - a.sqrt()[:, :, None] * means[None]  # B x 2 x 2
        logw = -(centred**2).sum(-1) / (2 * var)  # B x 2
        w = torch.softmax(logw, dim=1)
        x0_k = means[None] + a.sqrt()[:, :, None] * self.sigma**2 * centred / var[:, :, None]
        x0 = (w[:, :, None] * x0_k).sum(1)
        return ((xd - a.sqrt() * x0) / (1.0 - a).sqrt()).to(x.dtype)
