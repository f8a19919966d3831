"""Closed forms of App. A.1 (eqs. 6–7), the robust-optimal direction, mu and the synthetic means."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.simulation import (
    batch_accuracies,
    closed_form_robust_accuracy,
    empirical_accuracies,
    make_mu,
    optimal_accuracies,
    optimal_robust_direction,
    orthogonal_unit,
    sample_mixture,
    standard_accuracy,
    synthetic_mean,
)

CASES = [
    # (theta, mu, sigma, eps)
    (np.array([1.0, 1.0]), np.array([1.0, 1.0]), 1.0, 0.5),
    (np.array([1.0, 0.2]), np.array([1.366, 0.366]), 1.0, 0.5),
    (np.array([0.3, -1.0, 0.5]), np.array([0.5, -0.8, 0.1]), 0.7, 0.1),
    (np.array([2.0, -1.0, 0.0, 0.5]), np.array([1.0, 0.0, -0.5, 0.25]), 1.3, 0.2),
]


@pytest.mark.parametrize(("theta", "mu", "sigma", "eps"), CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_closed_forms_match_monte_carlo(theta: np.ndarray, mu: np.ndarray, sigma: float, eps: float) -> None:
    n = 400_000
    rng = np.random.default_rng(123)
    x, y = sample_mixture(mu, n, sigma=sigma, rng=rng)
    # The attack written out: every coordinate moved by eps against the label (worst case for a linear rule).
    x_adv = x - eps * y[:, None] * np.sign(theta)
    mc_standard = np.mean(np.sign(x @ theta) == y)
    mc_robust = np.mean(np.sign(x_adv @ theta) == y)
    standard = standard_accuracy(theta, mu, sigma=sigma)
    robust = closed_form_robust_accuracy(theta, mu, sigma=sigma, eps=eps)
    for closed, mc in ((standard, mc_standard), (robust, mc_robust)):
        tolerance = 5 * math.sqrt(closed * (1 - closed) / n)  # 5 standard errors of a proportion
        assert abs(closed - mc) < tolerance, (closed, mc)
    assert empirical_accuracies(theta, x, y, eps=eps) == pytest.approx((mc_standard, mc_robust))


def test_worst_case_perturbation_beats_random_ones() -> None:
    """The corner -eps y sign(theta) used by eq. (7) is at least as harmful as random points of the ball."""
    rng = np.random.default_rng(0)
    theta, mu, eps = np.array([1.0, -0.5, 0.25]), np.array([0.8, -0.6, 0.3]), 0.3
    x, y = sample_mixture(mu, 2000, rng=rng)
    worst = y * ((x - eps * y[:, None] * np.sign(theta)) @ theta)
    for _ in range(20):
        delta = rng.uniform(-eps, eps, size=x.shape)
        assert np.all(y * ((x + delta) @ theta) >= worst - 1e-12)


def test_robust_accuracy_never_exceeds_standard_accuracy() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        d = int(rng.integers(1, 8))
        theta, mu = rng.normal(size=d), rng.normal(size=d)
        eps, sigma = float(rng.uniform(0, 1)), float(rng.uniform(0.2, 2))
        robust = closed_form_robust_accuracy(theta, mu, sigma=sigma, eps=eps)
        assert robust <= standard_accuracy(theta, mu, sigma=sigma)
        assert closed_form_robust_accuracy(theta, mu, sigma=sigma, eps=0.0) == pytest.approx(
            standard_accuracy(theta, mu, sigma=sigma)
        )


@pytest.mark.parametrize("scale", [1e-3, 0.5, 7.0, 1e4])
def test_accuracies_are_invariant_to_positive_scaling(scale: float) -> None:
    theta, mu = np.array([0.4, -1.2, 0.7]), np.array([1.0, -0.5, 0.2])
    assert standard_accuracy(scale * theta, mu) == pytest.approx(standard_accuracy(theta, mu), abs=1e-12)
    assert closed_form_robust_accuracy(scale * theta, mu, eps=0.2) == pytest.approx(
        closed_form_robust_accuracy(theta, mu, eps=0.2), abs=1e-12
    )
    # A negative scale flips every prediction.
    assert standard_accuracy(-scale * theta, mu) == pytest.approx(1 - standard_accuracy(theta, mu), abs=1e-12)


def test_batch_accuracies_match_the_scalar_functions() -> None:
    rng = np.random.default_rng(2)
    thetas, mu = rng.normal(size=(4, 3, 5)), rng.normal(size=5)
    standard, robust = batch_accuracies(thetas, mu, sigma=0.8, eps=0.15)
    assert standard.shape == robust.shape == (4, 3)
    for idx in np.ndindex(4, 3):
        assert standard[idx] == pytest.approx(standard_accuracy(thetas[idx], mu, sigma=0.8))
        assert robust[idx] == pytest.approx(closed_form_robust_accuracy(thetas[idx], mu, sigma=0.8, eps=0.15))


@pytest.mark.parametrize(
    ("mu", "eps"),
    [
        (np.array([1.0, 1.0]), 0.5),
        (np.array([1.366, 0.366]), 0.5),  # second coordinate below eps: thresholded to zero
        (np.array([0.9, -0.3, 0.05, 1.4, -0.7]), 0.2),
        (np.linspace(-1, 1, 12), 0.35),
    ],
    ids=["ones", "d2-30deg", "mixed-signs", "d12"],
)
def test_no_random_direction_beats_the_thresholded_one(mu: np.ndarray, eps: float) -> None:
    best = optimal_robust_direction(mu, eps)
    assert np.linalg.norm(best) == pytest.approx(1.0)
    best_value = closed_form_robust_accuracy(best, mu, eps=eps)
    rng = np.random.default_rng(3)
    random_dirs = rng.normal(size=(5000, mu.size))
    nearby = best + 0.05 * rng.normal(size=(2000, mu.size))  # small perturbations of the optimum
    _, robust = batch_accuracies(np.concatenate([random_dirs, nearby]), mu, eps=eps)
    assert robust.max() <= best_value + 1e-12
    assert optimal_accuracies(mu, eps=eps)[1] == pytest.approx(best_value)


def test_optimal_direction_is_mu_minus_eps_when_every_coordinate_exceeds_eps() -> None:
    mu = np.array([0.9, -0.6, 0.4])
    expected = (mu - 0.3 * np.sign(mu)) / np.linalg.norm(mu - 0.3 * np.sign(mu))
    np.testing.assert_allclose(optimal_robust_direction(mu, 0.3), expected)


def test_optimal_direction_refuses_eps_at_least_every_coordinate() -> None:
    with pytest.raises(ValueError, match=r"eps=0\.8"):
        optimal_robust_direction(np.array([0.5, -0.7]), 0.8)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: standard_accuracy(np.zeros(2), np.ones(2)), "zero vector"),
        (lambda: closed_form_robust_accuracy(np.zeros(3), np.ones(3), eps=0.1), "zero vector"),
        (lambda: standard_accuracy(np.ones(3), np.ones(2)), r"shape \(3,\).*shape \(2,\)"),
        (lambda: closed_form_robust_accuracy(np.ones(2), np.ones(2), eps=-0.1), r"eps .*-0\.1"),
        (lambda: standard_accuracy(np.ones(2), np.ones(2), sigma=-1.0), r"sigma .*-1\.0"),
        (lambda: standard_accuracy(np.ones(2), np.ones(2), sigma=0.0), r"sigma .*0\.0"),
        (lambda: standard_accuracy(np.array([1.0, np.nan]), np.ones(2)), "finite"),
        (lambda: standard_accuracy(np.ones((2, 2)), np.ones(2)), "1-D"),
        (
            lambda: batch_accuracies(np.array([[1.0, 1.0], [0.0, 0.0]]), np.ones(2)),
            r"zero vector at index \[1\]",
        ),
        (lambda: make_mu(2, 2.0, 200.0), r"angle_deg .*200"),
        (lambda: make_mu(2, 2.0, -5.0), r"angle_deg .*-5"),
        (lambda: make_mu(0, 2.0, 0.0), r"dim .*0"),
        (lambda: make_mu(2, -1.0, 0.0), r"mu_norm_sq .*-1"),
        (lambda: make_mu(1, 1.0, 30.0), r"angle_deg=30"),
        (lambda: synthetic_mean(np.ones(2), direction="clean", c=-1.0, eps=0.1), r"c .*-1\.0"),
        (lambda: synthetic_mean(np.ones(2), direction="diagonal", c=1.0, eps=0.1), "diagonal"),  # type: ignore[arg-type]
        (lambda: orthogonal_unit(np.ones(1)), "dim=1"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_input_raises_a_value_error_naming_it(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("angle", [0.0, 30.0, 60.0, 90.0])
@pytest.mark.parametrize("dim", [2, 3, 100])
def test_make_mu_has_the_requested_norm_and_angle(dim: int, angle: float) -> None:
    mu = make_mu(dim, 4.0, angle)
    assert mu.shape == (dim,)
    assert mu @ mu == pytest.approx(4.0)
    # The angle from atan2(|mu - (mu.u)u|, mu.u): arccos of a cosine within a few ulps of 1 is ill-conditioned
    # (an error of 2e-16 in the cosine is 1.2e-6 degrees), atan2 of the two components is not.
    u = np.ones(dim) / math.sqrt(dim)
    along = float(mu @ u)
    across = float(np.linalg.norm(mu - along * u))
    assert math.degrees(math.atan2(across, along)) == pytest.approx(angle, abs=1e-9)
    np.testing.assert_array_equal(mu, make_mu(dim, 4.0, angle))  # deterministic


def test_make_mu_in_two_dimensions_matches_the_documented_construction() -> None:
    np.testing.assert_allclose(make_mu(2, 2.0, 0.0), [1.0, 1.0])
    np.testing.assert_allclose(make_mu(2, 2.0, 90.0), [1.0, -1.0], atol=1e-12)
    a = math.radians(45 - 30)
    np.testing.assert_allclose(make_mu(2, 2.0, 30.0), math.sqrt(2) * np.array([math.cos(a), math.sin(a)]))


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0])
def test_synthetic_families(angle: float) -> None:
    mu = make_mu(5, 2.0, angle)
    np.testing.assert_allclose(synthetic_mean(mu, direction="clean", c=1.5, eps=0.1), 1.5 * mu)
    np.testing.assert_allclose(synthetic_mean(mu, direction="robust", c=1.5, eps=0.1), 1.5 * (mu - 0.1))
    ortho = synthetic_mean(mu, direction="orthogonal", c=1.5, eps=0.1)
    assert ortho @ mu == pytest.approx(0.0, abs=1e-12)
    assert np.linalg.norm(ortho) == pytest.approx(1.5 * np.linalg.norm(mu))
    # The orthogonal direction is a fixed choice, not a random one.
    np.testing.assert_array_equal(ortho, synthetic_mean(mu, direction="orthogonal", c=1.5, eps=0.1))
