"""The contrastive losses against hand-computed values and a naive per-row version of the paper's formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.contrastive import hnm_loss, info_nce_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _naive_hnm(u: torch.Tensor, v: torch.Tensor, tau: float, tau_plus: float, beta: float) -> float:
    """Row by row, plain exponentials, exactly the paper's formulas."""
    b = u.shape[0]
    z = torch.cat([u, v]).double()
    losses = []
    for i in range(2 * b):
        partner = (i + b) % (2 * b)
        pos = math.exp(float(u[i % b].double() @ v[i % b].double()) / tau)
        neg = [math.exp(float(z[i] @ z[j]) / tau) for j in range(2 * b) if j not in (i, partner)]
        n = len(neg)
        reweight = n * sum(x ** (beta + 1) for x in neg) / sum(x**beta for x in neg)
        ng = max((reweight - tau_plus * n * pos) / (1 - tau_plus), n * math.exp(-1 / tau))
        losses.append(-math.log(pos / (pos + ng)))
    return sum(losses) / len(losses)


def _naive_infonce(u: torch.Tensor, v: torch.Tensor, tau: float) -> float:
    b = u.shape[0]
    total = 0.0
    for i in range(b):
        pos = math.exp(float(u[i].double() @ v[i].double()) / tau)
        negs = sum(math.exp(float(u[i].double() @ v[j].double()) / tau) for j in range(b) if j != i)
        total += -math.log(pos / (pos + negs))
    return total / b


def _unit(b: int, k: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, k, generator=g, dtype=dtype), dim=1)


E1, E2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def test_infonce_hand_computed() -> None:
    # u_i = v_i orthonormal, tau = 1: each row -log(e / (e + 1)).
    assert info_nce_loss(E1, E2, tau=1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)


@pytest.mark.parametrize(
    ("tau_plus", "expected_ng"),
    [(0.0, 2.0), (0.1, (2.0 - 0.1 * 2 * math.e) / 0.9)],
    ids=["plain", "debiased"],
)
def test_hnm_hand_computed(tau_plus: float, expected_ng: float) -> None:
    # Every row has pos = e and two negatives exp(0) = 1, so N = 2 and reweight = 2 for any beta.
    expected = math.log(1 + expected_ng / math.e)
    for beta in (0.0, 1.0):
        got = hnm_loss(E1, E2, tau=1.0, tau_plus=tau_plus, beta=beta).item()
        assert got == pytest.approx(expected, rel=1e-6)


def test_hnm_floor_applies() -> None:
    # tau_plus large enough that the debiased estimate goes negative: Ng = N exp(-1/tau).
    got = hnm_loss(E1, E2, tau=1.0, tau_plus=0.9, beta=0.0).item()
    assert got == pytest.approx(math.log(1 + 2 * math.exp(-1) / math.e), rel=1e-6)


@pytest.mark.parametrize("tau", [0.1, 0.5, 10.0])
@pytest.mark.parametrize("beta", [0.0, 1.0, 3.0])
@pytest.mark.parametrize("tau_plus", [0.0, 0.1])
def test_hnm_matches_naive(tau: float, beta: float, tau_plus: float) -> None:
    u, v = _unit(5, 4, 0), _unit(5, 4, 1)
    got = hnm_loss(u, v, tau=tau, tau_plus=tau_plus, beta=beta).item()
    assert got == pytest.approx(_naive_hnm(u, v, tau, tau_plus, beta), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("tau", [0.05, 0.5, 2.0])
def test_infonce_matches_naive_and_cross_entropy(tau: float) -> None:
    u, v = _unit(6, 3, 2), _unit(6, 3, 3)
    got = info_nce_loss(u, v, tau=tau)
    assert got.item() == pytest.approx(_naive_infonce(u, v, tau), rel=1e-9)
    ce = F.cross_entropy(u @ v.T / tau, torch.arange(6))
    assert got.item() == pytest.approx(ce.item(), rel=1e-9)


def test_beta_zero_is_debiased_loss() -> None:
    # Chuang et al. 2020: Ng = max((sum_j neg_ij - tau_plus N pos_i) / (1 - tau_plus), N e^{-1/tau}).
    u, v = _unit(4, 3, 4), _unit(4, 3, 5)
    tau, tau_plus = 0.5, 0.1
    z = torch.cat([u, v])
    b, n = 4, 6
    sim = torch.exp(z @ z.T / tau)
    mask = ~torch.eye(2 * b, dtype=torch.bool)
    for i in range(b):
        mask[i, i + b] = mask[i + b, i] = False
    neg_sum = (sim * mask).sum(1)
    pos = torch.exp((u * v).sum(1) / tau).repeat(2)
    ng = ((neg_sum - tau_plus * n * pos) / (1 - tau_plus)).clamp_min(n * math.exp(-1 / tau))
    expected = (-torch.log(pos / (pos + ng))).mean()
    got = hnm_loss(u, v, tau=tau, tau_plus=tau_plus, beta=0.0).item()
    assert got == pytest.approx(expected.item(), rel=1e-9)


def test_hnm_small_tau_is_finite() -> None:
    u, v = _unit(8, 5, 6, torch.float32), _unit(8, 5, 7, torch.float32)
    loss = hnm_loss(u, v, tau=0.005, tau_plus=0.1, beta=1.0)
    assert torch.isfinite(loss)
    assert torch.isfinite(info_nce_loss(u, v, tau=0.005))


def test_gradcheck_float64() -> None:
    u = _unit(4, 3, 8).requires_grad_(True)
    v = _unit(4, 3, 9).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: hnm_loss(a, b, tau=0.5, tau_plus=0.1, beta=1.0), (u, v))
    assert torch.autograd.gradcheck(lambda a, b: info_nce_loss(a, b, tau=0.3), (u, v))
    labels = torch.tensor([0, 1, 0, 1])
    assert torch.autograd.gradcheck(
        lambda a, b: hnm_loss(a, b, tau=0.5, tau_plus=0.1, beta=1.0, labels=labels), (u, v)
    )
    negs = _unit(3, 3, 10).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b, n: hnm_loss(a, b, tau=0.5, tau_plus=0.0, beta=2.0, negatives=n), (u, v, negs)
    )


def test_explicit_negatives_match_naive() -> None:
    u, v, n = _unit(3, 4, 11), _unit(3, 4, 12), _unit(5, 4, 13)
    tau = 0.7
    got = info_nce_loss(u, v, tau=tau, negatives=n).item()
    rows = []
    for i in range(3):
        pos = math.exp(float(u[i] @ v[i]) / tau)
        neg = sum(math.exp(float(u[i] @ n[j]) / tau) for j in range(5))
        rows.append(-math.log(pos / (pos + neg)))
    assert got == pytest.approx(sum(rows) / 3, rel=1e-9)
    # HNM with beta = 0, tau_plus = 0: Ng = sum of the M negatives (floor inactive here).
    got = hnm_loss(u, v, tau=tau, tau_plus=0.0, beta=0.0, negatives=n).item()
    z = torch.cat([u, v])
    rows = []
    for i in range(6):
        pos = math.exp(float(u[i % 3] @ v[i % 3]) / tau)
        ng = max(sum(math.exp(float(z[i] @ n[j]) / tau) for j in range(5)), 5 * math.exp(-1 / tau))
        rows.append(-math.log(pos / (pos + ng)))
    assert got == pytest.approx(sum(rows) / 6, rel=1e-9)


def test_labels_restrict_negatives() -> None:
    u, v = _unit(4, 3, 14), _unit(4, 3, 15)
    labels = torch.tensor([0, 0, 1, 1])
    tau = 0.5
    got = info_nce_loss(u, v, tau=tau, labels=labels).item()
    rows = []
    for i in range(4):
        pos = math.exp(float(u[i] @ v[i]) / tau)
        neg = sum(math.exp(float(u[i] @ v[j]) / tau) for j in range(4) if labels[j] != labels[i])
        rows.append(-math.log(pos / (pos + neg)))
    assert got == pytest.approx(sum(rows) / 4, rel=1e-9)
    # One class only: no negatives anywhere, loss 0 and a zero (not NaN) gradient.
    a = u.clone().requires_grad_(True)
    loss = hnm_loss(a, v, tau=tau, tau_plus=0.1, beta=1.0, labels=torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(a.grad, torch.zeros_like(a))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tau": 0.0}, "tau must be"),
        ({"tau": -1.0}, "-1.0"),
        ({"tau_plus": 1.0}, "tau_plus must lie in .0, 1., got 1.0"),
        ({"tau_plus": -0.1}, "-0.1"),
        ({"beta": -1.0}, "beta must be"),
    ],
    ids=["tau0", "tau-neg", "tau_plus1", "tau_plus-neg", "beta-neg"],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"tau": 0.5, "tau_plus": 0.1, "beta": 1.0} | kwargs
    with pytest.raises(ValueError, match=match):
        hnm_loss(E1, E2, **args)


def test_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="B x k"):
        info_nce_loss(E1, torch.ones(3, 2), tau=1.0)


def test_every_contrastive_loss_name_has_a_table_entry_and_unknown_names_are_refused() -> None:
    from core import options
    from core.contrastive.losses import LOSSES, pair_loss

    assert set(LOSSES) == set(options.CONTRASTIVE_LOSSES)
    e = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    for name in options.CONTRASTIVE_LOSSES:
        assert torch.isfinite(pair_loss(name, e, e, tau=0.5))
    with pytest.raises(ValueError, match="unknown contrastive loss 'ntxent'"):
        pair_loss("ntxent", e, e, tau=0.5)  # type: ignore[arg-type]
