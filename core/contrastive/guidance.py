"""The contrastive guidance term of Contrastive-DP (paper Algorithm 1, line 6; App. C.1).

At a guided step the sampler's epsilon becomes ``eps + lam * grad_{x_t} L_contra``, where ``L_contra`` is
the MEAN InfoNCE or HNM loss over the batch (as the authors' code does: the gradient each sample receives
therefore scales like 1 / batch size), computed on L2-normalised embeddings

    e(x) = normalize(g(f(x)))   (g = optional online-trained embedding head, identity otherwise).

Pair strategies (App. C.1):

- ``previous`` (default): the positive of x_t^(i) is its own previous, noisier state x_{t+1}^(i);
  negatives are the other samples of the batch (and their previous states, for HNM).
- ``real_positive``: the positive of each sample is a real sample drawn at random each step; negatives are
  the rest of the batch (and the other drawn real samples, for HNM).
- ``real_negative``: positive = previous state, negatives = real samples drawn at random each step.
- ``class_conditional``: positive = previous state, negatives = batch samples of a different class; labels
  come from the conditional model (``class_labels`` passed to ``sample``) or from ``label_fn`` applied to the
  current predicted x_0 (e.g. a pseudo-labelling classifier).

Where the features are taken (``feature_on``): on x_t itself (the paper) or on the predicted clean image
x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) with eps held fixed, so the gradient reaching x_t is the
x0-space gradient divided by sqrt(a_t).

The guidance runs outside ``torch.no_grad()`` (the sampler calls it there), on a detached copy of x_t, under
``torch.enable_grad()``. It is active only at timesteps inside ``window`` = (lo, hi), inclusive at both ends
(the authors' CIFAR-10 code: t >= 400, i.e. (400, T - 1); their small-image code: 50 < t < 150, i.e.
(51, 149)), and never on the first step (there is no previous state yet).

The positive of the ``previous`` strategies is the previous state's embedding, whose raw features f(.) are
exactly the anchor features computed at the previous guided step (the same x_t, or the same predicted x_0,
since eps is held fixed): they are kept (detached) and reused, so a guided step costs one feature forward
and backward, not two (``reuse_features=False`` recomputes them; the results are identical). The embedding
head is applied afresh to the kept features at every step. Nothing here synchronises with the device inside
the loop: the per-step loss and gradient norm stay tensors until :attr:`ContrastiveGuidance.history` is
read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from core import options
from core.contrastive.checks import check_guidance_args, validate_window
from core.contrastive.features import EmbeddingHead, FeatureFn, LabelFn
from core.contrastive.losses import pair_loss
from core.options import FEATURE_ON, REAL_STRATEGIES, FeatureOn, Strategy, check_choice
from core.options import ContrastiveLoss as LossName

log = logging.getLogger(__name__)


@dataclass
class GuidanceStep:
    """What one guided step did (kept in ``ContrastiveGuidance.history``)."""

    step: int
    t: int
    loss: float
    grad_norm: float  # mean over samples of ||lam * grad||


@dataclass
class _PendingStep:
    step: int
    t: int
    loss: Tensor  # 0-d, detached, on the sampling device
    grad_norm: Tensor


class ContrastiveGuidance:
    """Callable guidance for ``core.diffusion.sample`` (see the module docstring for the design).

    Args:
        feature_fn: f, maps a batch in the sampler's space to N x k features (for images use
            :func:`classifier_feature_fn`; for 2-D points the identity).
        loss: "hnm" or "infonce"; lam: guidance scale lambda >= 0; tau > 0 temperature;
        tau_plus in [0, 1), beta >= 0: HNM parameters.
        strategy: one of App. C.1's pair strategies.
        window: (lo, hi) inclusive timestep window, or None for every step but the first.
        feature_on: compute features on x_t or on the predicted x_0.
        real: real samples in the sampler's space (needed by real_positive / real_negative).
        real_batch: how many real samples to draw per step (default: the batch size).
        label_fn: labels for class_conditional when the model is unconditional.
        embedding_head: train an embedding head online (Adam, ``head_lr``, one step per guided step).
        keep_head: keep the head (and its optimiser) from one ``sample`` run to the next, so one head is
            trained across all batches of a generation run, as the authors train one head over their whole
            sampling loop; ``False`` re-creates it for every run (the per-batch head). :meth:`reset_head`
            starts afresh.
        generator: the randomness of real-sample draws and of the head's initialisation.
    """

    def __init__(
        self,
        feature_fn: FeatureFn,
        *,
        loss: LossName = options.CONTRASTIVE_LOSS,
        lam: float,
        tau: float,
        tau_plus: float = options.TAU_PLUS,
        beta: float = options.BETA,
        strategy: Strategy = options.STRATEGY,
        window: tuple[int, int] | None = None,
        feature_on: FeatureOn = options.FEATURE_ON_DEFAULT,
        real: Tensor | None = None,
        real_batch: int | None = None,
        label_fn: LabelFn | None = None,
        embedding_head: bool = False,
        head_hidden: int = 128,
        head_dim: int = 128,
        head_lr: float = 1e-2,
        generator: torch.Generator | None = None,
        reuse_features: bool = True,
        keep_head: bool = False,
    ) -> None:
        check_guidance_args(loss=loss, lam=lam, tau=tau, tau_plus=tau_plus, beta=beta, strategy=strategy)
        validate_window(window)
        check_choice("feature_on", feature_on, FEATURE_ON)
        if strategy in REAL_STRATEGIES and (real is None or real.shape[0] == 0):
            raise ValueError(f"strategy {strategy!r} needs real samples (real=...), got none")
        if real_batch is not None and real_batch < 1:
            raise ValueError(f"real_batch must be >= 1, got {real_batch!r}")
        if head_lr <= 0:
            raise ValueError(f"head_lr must be > 0, got {head_lr!r}")
        self.feature_fn = feature_fn
        self.loss_name: LossName = loss
        self.lam = float(lam)
        self.tau = float(tau)
        self.tau_plus = float(tau_plus)
        self.beta = float(beta)
        self.strategy: Strategy = strategy
        self.window = tuple(window) if window is not None else None
        self.feature_on: FeatureOn = feature_on
        self.real = real
        self.real_batch = real_batch
        self.label_fn = label_fn
        self.use_head = embedding_head
        self.keep_head = bool(keep_head)
        self.head_hidden, self.head_dim, self.head_lr = head_hidden, head_dim, head_lr
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.head: EmbeddingHead | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._real_features: Tensor | None = None
        self._prev_x0: Tensor | None = None
        self.reuse_features = reuse_features
        self._kept: tuple[Tensor, Tensor] | None = None  # (x_t it was computed at, raw features f(source))
        self._pending: list[_PendingStep] = []
        self._history: list[GuidanceStep] = []

    @property
    def history(self) -> list[GuidanceStep]:
        """One entry per guided step of the last run (reading it moves the numbers to the host once)."""
        if self._pending:
            values = torch.stack([v for p in self._pending for v in (p.loss, p.grad_norm)]).cpu().tolist()
            self._history += [GuidanceStep(step=p.step, t=p.t, loss=values[2 * i],
                                           grad_norm=values[2 * i + 1]) for i, p in enumerate(self._pending)]
            self._pending = []
        return self._history

    # -- sampler hooks -------------------------------------------------------------------------------
    def prepare(self, timesteps: Sequence[int]) -> None:
        """Called by ``sample`` before a run: validate the window, reset the per-run state (and the head,
        unless ``keep_head``)."""
        validate_window(self.window, timesteps)
        if not self.keep_head:
            self.reset_head()
        self._prev_x0 = None
        self._kept = None
        self._pending, self._history = [], []

    def reset_head(self) -> None:
        """Forget the embedding head and its optimiser: the next guided step creates a fresh one."""
        self.head = None
        self._optimizer = None

    def active(self, t: int, step: int) -> bool:
        if step == 0 or self.lam == 0.0:
            return False
        return self.window is None or self.window[0] <= t <= self.window[1]

    def __call__(
        self,
        x_t: Tensor,
        t: int,
        *,
        eps: Tensor,
        alpha_bar_t: float,
        x_prev: Tensor | None,
        step: int,
        class_labels: Tensor | None,
    ) -> Tensor | None:
        x0_hat = ((x_t - math.sqrt(1.0 - alpha_bar_t) * eps) / math.sqrt(alpha_bar_t)).detach()
        prev_x0, self._prev_x0 = self._prev_x0, x0_hat
        if not self.active(t, step) or x_prev is None:
            return None
        positive_input = x_prev if self.feature_on == "x_t" else prev_x0
        if positive_input is None:
            return None
        kept, self._kept = self._kept, None
        positive_raw = kept[1] if (self.reuse_features and kept is not None and kept[0] is x_prev) else None
        with torch.enable_grad():
            x = x_t.detach().clone().requires_grad_(True)
            if self.feature_on == "x_t":
                source = x
            else:  # predicted x_0 with eps held fixed: d source / d x_t = 1 / sqrt(a_t)
                source = (x - math.sqrt(1.0 - alpha_bar_t) * eps.detach()) / math.sqrt(alpha_bar_t)
            loss, anchor_raw = self._loss(source, positive_input.detach(), x0_hat=x0_hat,
                                          class_labels=class_labels, positive_raw=positive_raw)
            params = list(self.head.parameters()) if self.head is not None else []
            grads = torch.autograd.grad(loss, [x, *params], allow_unused=True)
        if self.reuse_features:
            self._kept = (x_t, anchor_raw.detach())  # the next step's positive: f of this very state
        if self._optimizer is not None:
            for p, g in zip(params, grads[1:], strict=True):
                p.grad = g
            self._optimizer.step()
            self._optimizer.zero_grad(set_to_none=True)
        term = self.lam * grads[0]
        self._pending.append(_PendingStep(step=step, t=t, loss=loss.detach(),
                                          grad_norm=term.flatten(1).norm(dim=1).mean().detach()))
        return term.detach()

    # -- pieces --------------------------------------------------------------------------------------
    def embed_features(self, h: Tensor) -> Tensor:
        """normalize(g(h)) for raw features h = f(x) (the head is created on first use)."""
        if self.use_head:
            if self.head is None:
                self.head = EmbeddingHead(
                    h.shape[1], hidden=self.head_hidden, out_dim=self.head_dim, generator=self.generator
                ).to(device=h.device, dtype=h.dtype)
                # fused: the step count stays a tensor, so the update never reads a value back to the host
                self._optimizer = torch.optim.Adam(self.head.parameters(), lr=self.head_lr, fused=True)
            h = self.head(h)
        return F.normalize(h, dim=1)

    def contrastive_loss(
        self,
        anchor: Tensor,
        positive: Tensor,
        *,
        negatives: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """The configured loss on embeddings (mean over rows)."""
        return pair_loss(self.loss_name, anchor, positive, tau=self.tau, tau_plus=self.tau_plus,
                         beta=self.beta, negatives=negatives, labels=labels)

    def _draw_real(self, n: int, device: torch.device) -> Tensor:
        """Embeddings of ``n`` real samples drawn at random (with replacement) from ``real``."""
        assert self.real is not None
        if self._real_features is None:  # f is fixed, so the raw real features are computed once
            with torch.no_grad():
                chunks = [
                    self.feature_fn(self.real[i : i + 512].to(device)).flatten(1)
                    for i in range(0, self.real.shape[0], 512)
                ]
            self._real_features = torch.cat(chunks)
        idx = torch.randint(
            self._real_features.shape[0], (n,), generator=self.generator, device=self.generator.device
        ).to(self._real_features.device)
        chosen = self._real_features[idx].to(device)
        if self.head is not None:
            chosen = self.head(chosen)
        return F.normalize(chosen, dim=1)

    def _loss(
        self, source: Tensor, positive_input: Tensor, *, x0_hat: Tensor, class_labels: Tensor | None,
        positive_raw: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(loss, the anchor's raw features f(source)); ``positive_raw`` are the positive's raw features when
        they are already known (the previous step's anchor), else they are computed here."""
        anchor_raw = self.feature_fn(source).flatten(1)
        anchor = self.embed_features(anchor_raw)  # B x k, carries the gradient to x_t
        b = anchor.shape[0]
        if self.strategy == "real_positive":
            return self.contrastive_loss(anchor, self._draw_real(b, anchor.device)), anchor_raw
        if positive_raw is None:
            with torch.no_grad():
                positive_raw = self.feature_fn(positive_input).flatten(1)
        positive_feat = self.head(positive_raw) if self.head is not None else positive_raw
        positive = F.normalize(positive_feat, dim=1)
        if self.strategy == "previous":
            return self.contrastive_loss(anchor, positive), anchor_raw
        if self.strategy == "real_negative":
            negatives = self._draw_real(self.real_batch or b, anchor.device)
            return self.contrastive_loss(anchor, positive, negatives=negatives), anchor_raw
        labels = class_labels
        if labels is None:
            if self.label_fn is None:
                raise ValueError(
                    "strategy 'class_conditional' needs class_labels from a conditional model or a label_fn"
                )
            labels = self.label_fn(x0_hat)
        return self.contrastive_loss(anchor, positive, labels=labels.to(anchor.device)), anchor_raw
