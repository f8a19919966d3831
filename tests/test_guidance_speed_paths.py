"""The guided loop's fast paths give the samples of the plain paths: the positive's features reused from the
previous step (one feature call per guided step), no host synchronisation per step, a compiled UNet."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from diffusion_helpers import linear_alphas

from core.contrastive import ContrastiveGuidance, classifier_feature_fn
from core.diffusion import ddim_timesteps, sample
from core.models import build_classifier, build_unet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    unet = build_unet("tiny", image_size=16, channels=1).eval()
    classifier = build_classifier("small_cnn", num_classes=10, channels=1, image_size=16, width=8,
                                  feature_dim=32).eval()
    return unet, classifier


class CountingFeatures:
    def __init__(self, classifier: torch.nn.Module) -> None:
        self.inner = classifier_feature_fn(classifier)
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


ALPHAS = linear_alphas()


def run(models, *, reuse: bool, **guidance_kw) -> tuple[torch.Tensor, CountingFeatures, ContrastiveGuidance]:
    unet, classifier = models
    features = CountingFeatures(classifier)
    options = dict(loss="hnm", lam=50.0, tau=0.5) | guidance_kw
    guidance = ContrastiveGuidance(features, reuse_features=reuse, **options)
    x_T = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    out = sample(unet, x_T, alphas_cumprod=ALPHAS, timesteps=ddim_timesteps(1000, 8), guidance=guidance)
    return out, features, guidance


@pytest.mark.parametrize("options", [{}, {"feature_on": "x0_hat"}, {"embedding_head": True},
                                     {"loss": "infonce", "tau": 0.1}, {"window": (300, 999)}],
                         ids=["x_t", "x0_hat", "head", "infonce", "window"])
def test_reusing_the_positive_features_gives_the_recomputed_samples(models, options) -> None:
    fast, fast_calls, fast_g = run(models, reuse=True, **options)
    slow, slow_calls, slow_g = run(models, reuse=False, **options)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)
    guided = len(slow_g.history)
    assert guided == len(fast_g.history) > 0
    assert [h.loss for h in fast_g.history] == pytest.approx([h.loss for h in slow_g.history], abs=1e-6)
    assert slow_calls.calls == 2 * guided  # anchor + positive at every guided step
    assert fast_calls.calls == guided + 1  # one per guided step, plus the first step's positive


@contextlib.contextmanager
def count_host_syncs() -> Iterator[list[str]]:
    """Counts the Tensor methods that copy a value to the host (``.item()``, ``float(t)``, ``bool(t)``,
    ``.tolist()``, ``.cpu()``/``.numpy()``): on a GPU each one waits for the device."""
    seen: list[str] = []
    names = ("item", "__float__", "__bool__", "__int__", "tolist", "numpy", "cpu")
    originals = {name: getattr(torch.Tensor, name) for name in names}

    def wrap(name: str):
        original = originals[name]

        def counted(self, *args, **kwargs):
            seen.append(name)
            return original(self, *args, **kwargs)

        return counted

    for name in names:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield seen
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@pytest.mark.parametrize("options", [{}, {"embedding_head": True}, {"strategy": "class_conditional"}],
                         ids=["previous", "head", "class_conditional"])
def test_the_guided_loop_does_not_synchronise_per_step(models, options) -> None:
    unet, classifier = models
    if options.get("strategy") == "class_conditional":
        from core.contrastive import classifier_label_fn

        options = {**options, "label_fn": classifier_label_fn(classifier)}
    guidance = ContrastiveGuidance(classifier_feature_fn(classifier), loss="hnm", lam=50.0, tau=0.5,
                                   **options)
    x_T = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    sample(unet, x_T, alphas_cumprod=ALPHAS, timesteps=ddim_timesteps(1000, 3), guidance=guidance)  # warm
    with count_host_syncs() as few:
        sample(unet, x_T, alphas_cumprod=ALPHAS, timesteps=ddim_timesteps(1000, 3), guidance=guidance)
    with count_host_syncs() as many:
        sample(unet, x_T, alphas_cumprod=ALPHAS, timesteps=ddim_timesteps(1000, 12), guidance=guidance)
    # whatever happens once per run is allowed; nothing may grow with the number of steps
    assert len(many) == len(few), (few, many)
    assert len(guidance.history) == 11  # the history is complete once read


@pytest.mark.parametrize("speed", [{"channels_last": True}, {"compile": "aot_eager"},
                                   {"compile": "aot_eager", "channels_last": True}],
                         ids=["channels_last", "compiled", "compiled+channels_last"])
def test_the_fast_paths_give_the_eager_samples(models, speed) -> None:
    """Compiled (graph capture through aot_eager: inductor's code generation takes minutes on this CPU and
    runs on GPU hosts, tests/test_device_paths.py) and channels_last loops match the plain loop at 1e-4.

    channels_last runs other convolution kernels, which sum in another order: float32 reassociation, grown
    through four guided steps (lambda 50), reached 1.4e-5 on one pixel of 1024 on one CPU of this pool (and
    stayed under 1e-5 on another). A layout or graph bug moves samples by O(1), far above the tolerance."""
    from core.diffusion.fast import SamplingSpeed, fast_features, fast_unet

    unet, classifier = models
    plain_g = ContrastiveGuidance(classifier_feature_fn(classifier), loss="hnm", lam=50.0, tau=0.5)
    fast_g = ContrastiveGuidance(fast_features(classifier_feature_fn(classifier), SamplingSpeed(**speed)),
                                 loss="hnm", lam=50.0, tau=0.5)
    x_T = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    ts = ddim_timesteps(1000, 4)
    plain = sample(unet, x_T, alphas_cumprod=ALPHAS, timesteps=ts, guidance=plain_g)
    fast = sample(fast_unet(unet, SamplingSpeed(**speed)), x_T, alphas_cumprod=ALPHAS, timesteps=ts,
                  guidance=fast_g)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)
    unet.to(memory_format=torch.contiguous_format)  # the module fixture is shared


def test_bf16_is_only_used_on_cuda() -> None:
    from core.diffusion.fast import SamplingSpeed

    assert SamplingSpeed(bf16=True).autocast_dtype("cpu") is None
    assert SamplingSpeed(bf16=True).autocast_dtype("cuda:0") is torch.bfloat16
    assert SamplingSpeed().autocast_dtype("cuda") is None
