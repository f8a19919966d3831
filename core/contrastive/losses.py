"""Contrastive losses on L2-normalised embeddings (paper §4.2), and
:func:`batch_contrastive_loss`, how distinguishable a batch of embeddings is.

Both losses take anchors ``u`` and positives ``v`` (B x k, rows already L2-normalised; the losses do not
normalise) and return the MEAN loss over their rows, as the authors' guidance does.

Negatives, by default, come from the batch. Two options serve the pair strategies of App. C.1:

- ``negatives`` (M x k): an explicit set of negatives shared by every row (real data as negatives);
- ``labels`` (B,): in-batch negatives are restricted to rows of a different label (class-conditional).
  Rows left with no negative at all are dropped from the mean (the loss is 0 if none remains).

All exponentials are computed shifted by a per-row maximum (log-sum-exp), so small temperatures do not
overflow; the value equals the textbook formula.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from core import options
from core.options import ContrastiveLoss


def _check_pair(anchor: Tensor, positive: Tensor) -> None:
    if anchor.ndim != 2 or anchor.shape != positive.shape:
        raise ValueError(
            f"anchor and positive must both be B x k, got {tuple(anchor.shape)} and {tuple(positive.shape)}"
        )
    if anchor.shape[0] < 1:
        raise ValueError("empty batch")


def _check_tau(tau: float) -> None:
    if not isinstance(tau, int | float) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")


def _check_extra(anchor: Tensor, negatives: Tensor | None, labels: Tensor | None) -> None:
    if negatives is not None and labels is not None:
        raise ValueError("give either explicit negatives or labels for in-batch negatives, not both")
    if negatives is not None and (negatives.ndim != 2 or negatives.shape[1] != anchor.shape[1]):
        raise ValueError(f"negatives must be M x {anchor.shape[1]}, got {tuple(negatives.shape)}")
    if labels is not None and labels.shape != (anchor.shape[0],):
        raise ValueError(f"labels must have shape ({anchor.shape[0]},), got {tuple(labels.shape)}")


def _masked_mean(values: Tensor, keep: Tensor) -> Tensor:
    """Mean of ``values`` over the rows where ``keep``; 0 (with a zero gradient) when no row is kept. No
    branch on tensor values, so the guided sampling loop never waits for the device here."""
    kept = keep.sum().clamp_min(1).to(values.dtype)
    return torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum() / kept


def info_nce_loss(
    anchor: Tensor,
    positive: Tensor,
    *,
    tau: float,
    negatives: Tensor | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """InfoNCE (van den Oord et al. 2018) in its common "unpaired" form.

    L_i = -log( exp(u_i.v_i / tau) / (exp(u_i.v_i / tau) + sum_{n in N_i} exp(u_i.n / tau)) ),
    where by default N_i = {v_j : j != i} (logits u v^T / tau with the diagonal as target, i.e. the
    cross-entropy form). With ``negatives`` N_i = rows of ``negatives``; with ``labels``
    N_i = {v_j : labels_j != labels_i}. Returns mean_i L_i.
    """
    _check_pair(anchor, positive)
    _check_tau(tau)
    _check_extra(anchor, negatives, labels)
    pos_logit = (anchor * positive).sum(dim=1) / tau  # B
    if negatives is not None:
        neg_logits = anchor @ negatives.T / tau  # B x M
        valid = torch.ones_like(neg_logits, dtype=torch.bool)
    else:
        neg_logits = anchor @ positive.T / tau  # B x B
        valid = ~torch.eye(anchor.shape[0], dtype=torch.bool, device=anchor.device)
        if labels is not None:
            valid = valid & (labels[:, None] != labels[None, :])
    neg_logits = neg_logits.masked_fill(~valid, -math.inf)
    all_logits = torch.cat([pos_logit[:, None], neg_logits], dim=1)  # B x (1 + M)
    per_row = torch.logsumexp(all_logits, dim=1) - pos_logit
    return _masked_mean(per_row, valid.any(dim=1))


def _hnm_rows(
    pos_logit: Tensor, neg_logits: Tensor, valid: Tensor, *, tau: float, tau_plus: float, beta: float
) -> tuple[Tensor, Tensor]:
    """Per-row HNM loss from logits (s / tau); returns (loss per row, row has negatives).

    Everything is scaled by exp(-shift_i) with shift_i the row's largest logit, so exponentials stay <= 1.
    """
    n_neg = valid.sum(dim=1).to(pos_logit.dtype)  # N_i
    has_neg = n_neg > 0
    # Rows without negatives are dropped by the caller; give them all columns so nothing is -inf/NaN.
    valid = valid | ~has_neg[:, None]
    n_eff = valid.sum(dim=1).to(pos_logit.dtype)
    bias = torch.zeros_like(neg_logits).masked_fill_(~valid, -math.inf)  # 0 on negatives, -inf elsewhere
    shift = torch.maximum((neg_logits.detach() + bias).amax(dim=1), pos_logit.detach())
    d = neg_logits - shift[:, None]  # log(neg_ij) - shift_i <= 0 on valid entries
    # reweight_i = N * sum_j neg_ij^(beta+1) / sum_j neg_ij^beta, in logs and shifted by -shift_i.
    log_reweight = (
        torch.log(n_eff)
        + torch.logsumexp((beta + 1.0) * d + bias, dim=1)
        - torch.logsumexp(beta * d + bias, dim=1)
    )
    pos_s = torch.exp(pos_logit - shift)  # pos_i * exp(-shift_i) <= 1
    first = (torch.exp(log_reweight) - tau_plus * n_eff * pos_s) / (1.0 - tau_plus)
    log_floor = torch.log(n_eff) - 1.0 / tau - shift  # log( N exp(-1/tau) ), shifted
    log_ng = torch.maximum(torch.log(first.clamp_min(torch.finfo(first.dtype).tiny)), log_floor)
    # -log(pos / (pos + Ng)) = log(pos + Ng) - log(pos), both shifted by the same amount.
    per_row = torch.logaddexp(pos_logit - shift, log_ng) - (pos_logit - shift)
    return per_row, has_neg


def hnm_loss(
    anchor: Tensor,
    positive: Tensor,
    *,
    tau: float,
    tau_plus: float,
    beta: float,
    negatives: Tensor | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """Hard-negative-mining contrastive loss (Robinson et al. 2021; Chuang et al. 2020 when beta = 0).

    z = concat(u, v) (2B rows). For row i, pos_i = exp(u_i.v_i / tau) (same for both halves) and
    neg_ij = exp(z_i.z_j / tau) over the N = 2B - 2 rows other than i and its partner. Then
    reweight_i = N sum_j neg_ij^(beta+1) / sum_j neg_ij^beta,
    Ng_i = max( (reweight_i - tau_plus N pos_i) / (1 - tau_plus), N exp(-1/tau) ),
    L = -mean_i log( pos_i / (pos_i + Ng_i) ).
    beta = 0 gives the debiased loss (Ng = (sum_j neg_ij - tau_plus N pos) / (1 - tau_plus)).
    With ``negatives`` every row uses neg_ij = exp(z_i.n_j / tau) over the M given rows; with ``labels``
    only rows j of a different label count (N_i varies per row). The authors' extra clamps
    (neg >= 1e-4, ratio >= 1e-4) are not applied: the log-domain computation does not need them.
    """
    _check_pair(anchor, positive)
    _check_tau(tau)
    if not isinstance(tau_plus, int | float) or not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must lie in [0, 1), got {tau_plus!r}")
    if not isinstance(beta, int | float) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    _check_extra(anchor, negatives, labels)
    b = anchor.shape[0]
    z = torch.cat([anchor, positive], dim=0)  # 2B x k
    pos = (anchor * positive).sum(dim=1) / tau
    pos_logit = torch.cat([pos, pos])  # 2B
    if negatives is not None:
        neg_logits = z @ negatives.T / tau  # 2B x M
        valid = torch.ones_like(neg_logits, dtype=torch.bool)
    else:
        neg_logits = z @ z.T / tau  # 2B x 2B
        idx = torch.arange(2 * b, device=z.device)
        partner = (idx + b) % (2 * b)
        valid = (idx[:, None] != idx[None, :]) & (partner[:, None] != idx[None, :])
        if labels is not None:
            lab = torch.cat([labels, labels])
            valid = valid & (lab[:, None] != lab[None, :])
    per_row, has_neg = _hnm_rows(pos_logit, neg_logits, valid, tau=tau, tau_plus=tau_plus, beta=beta)
    return _masked_mean(per_row, has_neg)


def batch_contrastive_loss(
    embeddings: Tensor,
    *,
    loss: ContrastiveLoss = options.CONTRASTIVE_LOSS,
    tau: float,
    tau_plus: float = options.TAU_PLUS,
    beta: float = options.BETA,
) -> Tensor:
    """How distinguishable a batch is: the loss with each sample as its own positive (u = v = e).

    The positive term is then the constant exp(1/tau), so the value falls only as the samples' embeddings
    move apart. Used to compare final batches sampled with and without guidance.
    """
    unit = F.normalize(embeddings.flatten(1), dim=1)  # e in the formula above
    return pair_loss(loss, unit, unit, tau=tau, tau_plus=tau_plus, beta=beta)


def _info_nce(anchor: Tensor, positive: Tensor, *, tau: float, tau_plus: float, beta: float,
              negatives: Tensor | None, labels: Tensor | None) -> Tensor:
    del tau_plus, beta  # InfoNCE has no debiasing or hardness terms
    return info_nce_loss(anchor, positive, tau=tau, negatives=negatives, labels=labels)


def _hnm(anchor: Tensor, positive: Tensor, *, tau: float, tau_plus: float, beta: float,
         negatives: Tensor | None, labels: Tensor | None) -> Tensor:
    return hnm_loss(anchor, positive, tau=tau, tau_plus=tau_plus, beta=beta, negatives=negatives,
                    labels=labels)


# One entry per name of core.options.ContrastiveLoss (tests/test_contrastive_losses.py checks they agree).
LOSSES = {"infonce": _info_nce, "hnm": _hnm}


def pair_loss(
    name: ContrastiveLoss,
    anchor: Tensor,
    positive: Tensor,
    *,
    tau: float,
    tau_plus: float = options.TAU_PLUS,
    beta: float = options.BETA,
    negatives: Tensor | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """The loss called ``name`` (a key of :data:`LOSSES`) on embeddings, mean over rows; an unknown name is
    a ValueError listing the known ones, never a silent fall-through to another loss."""
    try:
        fn = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown contrastive loss {name!r}; expected one of {', '.join(LOSSES)}") from None
    return fn(anchor, positive, tau=tau, tau_plus=tau_plus, beta=beta, negatives=negatives, labels=labels)
