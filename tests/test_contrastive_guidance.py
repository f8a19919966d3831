"""ContrastiveGuidance inside the DDIM loop: window, effect, gradients, strategies, head, validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.contrastive import ContrastiveGuidance, batch_contrastive_loss
from core.diffusion import ddim_timesteps, sample
from core.simulation.toy2d import Toy2DConfig, toy_feature_map
from core.simulation.toy2d_models import ExactMixtureEps

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CFG = Toy2DConfig(model="exact")
ALPHAS = CFG.alphas_cumprod()
MODEL = ExactMixtureEps(torch.tensor(CFG.mu, dtype=torch.float64), sigma=1.0, alphas_cumprod=ALPHAS)
FEATURES = toy_feature_map(CFG, generator=torch.Generator().manual_seed(0))


def noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def guide(**kw) -> ContrastiveGuidance:
    base = dict(loss="hnm", lam=100.0, tau=0.5)
    return ContrastiveGuidance(FEATURES, **(base | kw))


class Recorder(nn.Module):
    """Wraps the eps-model and records the inputs it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return MODEL(x, t)


def test_outside_window_changes_nothing() -> None:
    ts = [800, 600, 400, 200, 0]
    x_T = noise(16, 0)
    plain, guided = Recorder(), Recorder()
    out_plain = sample(plain, x_T, alphas_cumprod=ALPHAS, timesteps=ts)
    g = guide(window=(0, 250))
    out_guided = sample(guided, x_T, alphas_cumprod=ALPHAS, timesteps=ts, guidance=g)
    # Steps at t = 800, 600, 400 are outside the window: the states entering t = 800..200 are identical.
    for a, b in zip(plain.inputs[:4], guided.inputs[:4], strict=True):
        assert torch.equal(a, b)
    assert not torch.allclose(plain.inputs[4], guided.inputs[4])
    assert not torch.allclose(out_plain, out_guided)
    assert [h.t for h in g.history] == [200, 0]
    # lam = 0: nothing at all changes.
    same = sample(MODEL, x_T, alphas_cumprod=ALPHAS, timesteps=ts, guidance=guide(lam=0.0))
    assert torch.equal(same, out_plain)


def test_first_step_never_guided() -> None:
    g = guide()
    sample(MODEL, noise(8, 1), alphas_cumprod=ALPHAS, timesteps=[900, 500, 100], guidance=g)
    assert [h.t for h in g.history] == [500, 100]


@pytest.mark.parametrize("loss", ["hnm", "infonce"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_guidance_lowers_final_batch_loss(loss: str, seed: int) -> None:
    ts = ddim_timesteps(1000, 20, "uniform")
    x_T = noise(64, seed)
    vanilla = sample(MODEL, x_T, alphas_cumprod=ALPHAS, timesteps=ts)
    guided = sample(MODEL, x_T, alphas_cumprod=ALPHAS, timesteps=ts, guidance=guide(loss=loss, lam=300.0))

    def batch_loss(x: torch.Tensor) -> float:
        return float(batch_contrastive_loss(FEATURES(x), loss=loss, tau=0.5))

    assert batch_loss(guided) < batch_loss(vanilla)


def test_term_is_lambda_times_gradient_of_mean_loss() -> None:
    # Finite differences in float64 on what the docstring promises: lam * d/dx mean L(e(x), e(x_prev)).
    x = noise(5, 3).double()
    x_prev = noise(5, 4).double()
    g = guide(lam=7.0)
    g.prepare([10, 5])
    term = g(x, 5, eps=torch.zeros_like(x), alpha_bar_t=0.5, x_prev=x_prev, step=1, class_labels=None)

    def loss_at(z: torch.Tensor) -> float:
        return float(g.contrastive_loss(g.embed_features(g.feature_fn(z).flatten(1)),
                                     g.embed_features(g.feature_fn(x_prev).flatten(1))))

    h = 1e-6
    numeric = torch.zeros_like(x)
    for i in range(5):
        for j in range(2):
            d = torch.zeros_like(x)
            d[i, j] = h
            numeric[i, j] = (loss_at(x + d) - loss_at(x - d)) / (2 * h)
    torch.testing.assert_close(term, 7.0 * numeric, atol=1e-6, rtol=1e-5)


def test_x0_hat_features_differ_and_scale() -> None:
    x, x_prev, eps = noise(6, 5), noise(6, 6), noise(6, 7)
    common = dict(x_prev=x_prev, step=1, class_labels=None)
    g_xt, g_x0 = guide(feature_on="x_t"), guide(feature_on="x0_hat")
    for g in (g_xt, g_x0):
        g.prepare([10, 5])
        g(x_prev, 10, eps=eps, alpha_bar_t=0.6, x_prev=None, step=0, class_labels=None)  # records prev x0
    t_xt = g_xt(x, 5, eps=eps, alpha_bar_t=0.5, **common)
    t_x0 = g_x0(x, 5, eps=eps, alpha_bar_t=0.5, **common)
    assert t_xt is not None and t_x0 is not None and not torch.allclose(t_xt, t_x0)


def test_same_seed_same_samples_and_head_learns() -> None:
    ts = ddim_timesteps(1000, 10, "uniform")
    x_T = noise(32, 8)

    def run(seed: int) -> tuple[torch.Tensor, ContrastiveGuidance]:
        g = guide(
            embedding_head=True, head_hidden=16, head_dim=8, generator=torch.Generator().manual_seed(seed)
        )
        return sample(MODEL, x_T, alphas_cumprod=ALPHAS, timesteps=ts, guidance=g), g

    a, ga = run(0)
    b, _ = run(0)
    c, _ = run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # The head was trained: recreate its initial weights from the same generator and compare.
    fresh = guide(embedding_head=True, head_hidden=16, head_dim=8, generator=torch.Generator().manual_seed(0))
    fresh.embed_features(fresh.feature_fn(x_T).flatten(1))
    assert ga.head is not None and fresh.head is not None
    assert not torch.allclose(ga.head.fc1.weight, fresh.head.fc1.weight)


def test_strategies_and_their_requirements() -> None:
    ts = ddim_timesteps(1000, 6, "uniform")
    real = noise(50, 9) + torch.tensor([1.0, 1.0])
    x_T = noise(16, 10)
    outs = {}
    for strategy in ("previous", "real_positive", "real_negative", "class_conditional"):
        g = guide(strategy=strategy, real=real, label_fn=lambda x: (x.sum(1) > 0).long())
        outs[strategy] = sample(MODEL, x_T, alphas_cumprod=ALPHAS, timesteps=ts, guidance=g)
        assert torch.isfinite(outs[strategy]).all() and len(g.history) == 5
    assert len({tuple(o.flatten().tolist()) for o in outs.values()}) == 4
    with pytest.raises(ValueError, match="real_negative"):
        guide(strategy="real_negative")
    g = guide(strategy="class_conditional")
    with pytest.raises(ValueError, match="class_labels"):
        sample(MODEL, x_T, alphas_cumprod=ALPHAS, timesteps=ts, guidance=g)
    # Labels from a conditional model are used when given (model ignores them here).
    labels = (torch.arange(16) % 2).long()

    class Cond(nn.Module):
        def forward(self, x, t, y):
            return MODEL(x, t)

    g = guide(strategy="class_conditional")
    sample(Cond(), x_T, alphas_cumprod=ALPHAS, timesteps=ts, guidance=g, class_labels=labels)
    assert len(g.history) == 5


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"lam": -1.0}, "lam .* got -1.0"),
        ({"tau": 0.0}, "tau .* got 0.0"),
        ({"tau": -2.0}, "got -2.0"),
        ({"tau_plus": 1.0}, "tau_plus .* got 1.0"),
        ({"tau_plus": -0.5}, "got -0.5"),
        ({"strategy": "augment"}, "'augment'"),
        ({"loss": "triplet"}, "'triplet'"),
        ({"window": (500, 100)}, r"\(500, 100\)"),
        ({"feature_on": "x_T"}, "'x_T'"),
    ],
    ids=lambda v: str(v),
)
def test_bad_arguments(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        guide(**kw)


def test_window_outside_schedule() -> None:
    g = guide(window=(950, 999))
    with pytest.raises(ValueError, match=r"\(950, 999\)"):
        sample(
            MODEL,
            noise(4, 11),
            alphas_cumprod=ALPHAS,
            timesteps=ddim_timesteps(1000, 10, "uniform"),
            guidance=g,
        )


def test_classifier_feature_fn_maps_to_unit_range() -> None:
    from core.contrastive import classifier_feature_fn, classifier_label_fn

    seen: list[torch.Tensor] = []

    class Spy(nn.Module):
        def features(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x.flatten(1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x.flatten(1)[:, :2]

    x = torch.tensor([[[[-1.0, 1.0], [0.0, 0.5]]]])
    classifier_feature_fn(Spy())(x)
    torch.testing.assert_close(seen[-1], torch.tensor([[[[0.0, 1.0], [0.5, 0.75]]]]))
    assert classifier_label_fn(Spy())(x).tolist() == [1]
    with pytest.raises(ValueError, match="features"):
        classifier_feature_fn(nn.Linear(2, 2))
