"""core.generation: GenerationParams validation, generate() determinism/progress/cancel, sample_metrics."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusion_helpers import linear_alphas, tiny_unet
from torch import nn

from core.contrastive import select_top_k
from core.diffusion import DiffusionModel
from core.generation import GeneratedSet, GenerationParams, generate
from core.progress import Cancelled, ProgressEvent
from core.quality import sample_metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TinyClassifier(nn.Module):
    """features: conv -> pool -> flatten (16-d); forward: linear on the features."""

    def __init__(self, num_classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(16, num_classes)
        self.num_classes, self.feature_dim = num_classes, 16

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(torch.tanh(self.conv(x)), 2).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def tiny_diffusion(num_classes: int | None = None) -> DiffusionModel:
    return DiffusionModel(
        unet=tiny_unet(num_classes),
        alphas_cumprod=linear_alphas(),
        num_train_timesteps=1000,
        image_size=8,
        channels=1,
        num_classes=num_classes,
    )


def params(**kw) -> GenerationParams:
    base = dict(
        loss="hnm", lam=50.0, tau=0.5, steps=4, schedule="uniform", guidance_window=None, batch_size=3
    )
    return GenerationParams(**(base | kw))


@pytest.fixture(scope="module")
def diffusion() -> DiffusionModel:
    return tiny_diffusion()


@pytest.fixture(scope="module")
def classifier() -> TinyClassifier:
    return TinyClassifier().eval()


def test_generate_shapes_and_determinism(diffusion: DiffusionModel, classifier: TinyClassifier) -> None:
    a = generate(diffusion, classifier, params=params(), count=5, seed=7)
    b = generate(diffusion, classifier, params=params(), count=5, seed=7)
    c = generate(diffusion, classifier, params=params(), count=5, seed=8)
    assert isinstance(a, GeneratedSet) and len(a) == 5
    assert a.images.shape == (5, 8, 8, 1) and a.images.dtype == np.uint8
    assert a.labels.dtype == np.int64 and a.confidence.dtype == np.float32 and a.entropy.dtype == np.float32
    assert ((a.confidence > 0) & (a.confidence <= 1)).all()
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    # Guidance ran (2 batches x 3 steps after the first) and changed the images.
    assert len(a.guidance) == 6
    summary = a.guidance_summary()
    assert summary is not None and summary["guided_steps"] == 6
    assert summary["mean_loss"] == pytest.approx(np.mean([g["loss"] for g in a.guidance]))
    vanilla = generate(diffusion, classifier, params=params(loss="none"), count=5, seed=7)
    assert not np.array_equal(a.images, vanilla.images)
    assert vanilla.guidance == [] and vanilla.guidance_summary() is None


def test_batches_are_seeded_independently_of_batch_size(
    diffusion: DiffusionModel, classifier: TinyClassifier
) -> None:
    # Batch b's noise comes from (seed, b): the first batch is the same whatever the count.
    a = generate(diffusion, classifier, params=params(loss="none"), count=3, seed=1)
    b = generate(diffusion, classifier, params=params(loss="none"), count=6, seed=1)
    assert np.array_equal(a.images, b.images[:3])


def test_progress_and_cancel(diffusion: DiffusionModel, classifier: TinyClassifier) -> None:
    seen: list[tuple[str, int, int]] = []

    def progress(event: ProgressEvent) -> None:
        seen.append((event.stage, event.current, event.total))

    generate(diffusion, classifier, params=params(), count=4, seed=0, progress=progress)
    sampling = [s for s in seen if s[0] == "sampling"]
    assert [c for _, c, _ in sampling] == list(range(1, 9)) and {t for *_, t in sampling} == {8}

    calls = []

    def cancel(event: ProgressEvent) -> None:
        calls.append(event.current)
        if event.current == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        generate(diffusion, classifier, params=params(), count=4, seed=0, progress=cancel)
    assert calls == [1, 2]


def test_conditional_model_gets_balanced_labels(classifier: TinyClassifier) -> None:
    model = tiny_diffusion(num_classes=3)
    out = generate(model, classifier, params=params(strategy="class_conditional"), count=7, seed=0)
    assert out.class_labels is not None and out.class_labels.tolist() == [0, 1, 2, 0, 1, 2, 0]


@pytest.mark.parametrize("strategy", ["real_positive", "real_negative", "class_conditional"])
def test_other_strategies_run(strategy: str, diffusion: DiffusionModel, classifier: TinyClassifier) -> None:
    real = np.random.default_rng(0).integers(0, 256, size=(10, 8, 8, 1), dtype=np.uint8)
    out = generate(
        diffusion,
        classifier,
        params=params(strategy=strategy, embedding_head=True),
        count=3,
        seed=0,
        real_images=real,
    )
    assert np.isfinite([g["loss"] for g in out.guidance]).all() and len(out.guidance) == 3


def test_real_strategies_need_matching_real_images(
    diffusion: DiffusionModel, classifier: TinyClassifier
) -> None:
    with pytest.raises(ValueError, match="real_images"):
        generate(diffusion, classifier, params=params(strategy="real_positive"), count=2, seed=0)
    wrong = np.zeros((4, 16, 16, 1), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"\(1, 16, 16\)"):
        generate(
            diffusion, classifier, params=params(strategy="real_negative"), count=2, seed=0, real_images=wrong
        )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"lam": -1.0}, "lam .* got -1.0"),
        ({"tau": 0.0}, "tau .* got 0.0"),
        ({"tau_plus": 1.0}, "tau_plus .* got 1.0"),
        ({"tau_plus": -0.2}, "got -0.2"),
        ({"strategy": "nearest"}, "'nearest'"),
        ({"loss": "triplet"}, "'triplet'"),
        ({"schedule": "cosine"}, "'cosine'"),
        ({"steps": 0}, "steps .* got 0"),
        ({"batch_size": 0}, "batch_size .* got 0"),
        ({"eta": -1.0}, "eta .* got -1.0"),
        ({"guidance_window": (300, 100)}, r"\(300, 100\)"),
        ({"guidance_window": (-5, 100)}, r"\(-5, 100\)"),
    ],
    ids=lambda v: str(v),
)
def test_params_validation(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        params(**kw)


def test_window_checked_against_schedule(diffusion: DiffusionModel, classifier: TinyClassifier) -> None:
    # 4 uniform steps: t = 750, 500, 250, 0. A window holding only the first step (or nothing) is refused.
    with pytest.raises(ValueError, match=r"\(760, 900\)"):
        generate(diffusion, classifier, params=params(guidance_window=(760, 900)), count=1, seed=0)
    with pytest.raises(ValueError, match=r"\(700, 999\)"):
        generate(diffusion, classifier, params=params(guidance_window=(700, 999)), count=1, seed=0)
    with pytest.raises(ValueError, match="1000"):
        generate(diffusion, classifier, params=params(guidance_window=(100, 1000)), count=1, seed=0)
    out = generate(diffusion, classifier, params=params(guidance_window=(200, 600)), count=2, seed=0)
    assert [g["t"] for g in out.guidance] == [500, 250]


def test_params_round_trip() -> None:
    p = params(guidance_window=[10, 20])
    assert p.guidance_window == (10, 20)
    assert GenerationParams(**p.to_dict()) == p
    assert replace(p, lam=0.0).guided is False and replace(p, loss="none").guided is False


def test_sample_metrics(classifier: TinyClassifier) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 8, 8, 1), dtype=np.uint8)
    labels = np.array([0, 1, 2] * 4, dtype=np.int64)
    m = sample_metrics(classifier, images, labels)
    assert m["count"] == 12 and m["class_histogram"] == [4, 4, 4]
    assert 1 / 3 <= m["mean_confidence"] <= 1 and 0 <= m["mean_entropy"] <= np.log(3) + 1e-6
    assert -1 <= m["separability_margin"] <= 1 and -1 <= m["mean_feature_cosine"] <= 1
    # No self-referential label agreement (1 by construction); sample_quality scores it with a judge.
    own = generate_like_labels(classifier, images)
    assert "label_agreement" not in sample_metrics(classifier, images, own)
    with pytest.raises(ValueError, match=r"\(12,\)"):
        sample_metrics(classifier, images, labels[:5])


def generate_like_labels(classifier: TinyClassifier, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        return classifier(x).argmax(1).numpy()


def test_select_top_k_on_generated(
    classifier: TinyClassifier, diffusion: DiffusionModel, tmp_path: Path
) -> None:
    out = generate(diffusion, classifier, params=params(loss="none"), count=9, seed=3)
    idx = select_top_k(classifier, out.images, out.labels, k=1, criterion="entropy")
    # One per present class, and it is the lowest-entropy sample of that class.
    assert len(idx) == len(np.unique(out.labels))
    for i in idx.tolist():
        same = out.labels == out.labels[i]
        assert out.entropy[i] == pytest.approx(out.entropy[same].min(), abs=1e-6)
    out.save_npz(tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as z:
        assert np.array_equal(z["image"], out.images) and np.array_equal(z["label"], out.labels)


def _count_heads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the input width of every EmbeddingHead created from now on."""
    from core.contrastive import guidance as guidance_module

    created: list[int] = []
    original = guidance_module.EmbeddingHead.__init__

    def counting(self, in_dim: int, **kw) -> None:
        created.append(in_dim)
        original(self, in_dim, **kw)

    monkeypatch.setattr(guidance_module.EmbeddingHead, "__init__", counting)
    return created


def test_one_embedding_head_per_run_persists_across_batches_and_is_fresh_for_the_next_run(
    diffusion: DiffusionModel, classifier: TinyClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = _count_heads(monkeypatch)
    run = generate(diffusion, classifier, params=params(embedding_head=True), count=9, seed=4)  # 3 batches
    assert len(created) == 1  # the head of the run, trained on across its three batches
    again = generate(diffusion, classifier, params=params(embedding_head=True), count=9, seed=4)
    assert len(created) == 2  # a new run (a new job) starts from a fresh head...
    np.testing.assert_array_equal(run.images, again.images)  # ...the same one: nothing leaks between runs
    per_batch = generate(diffusion, classifier, params=params(embedding_head=True, head_scope="batch"),
                         count=9, seed=4)
    assert len(created) == 2 + 3  # the per-batch option: one head per batch
    # the first batch sees the same fresh head either way; later batches see the trained one only per run
    np.testing.assert_array_equal(run.images[:3], per_batch.images[:3])
    assert not np.array_equal(run.images[3:], per_batch.images[3:])


def test_head_seed_fixes_the_initial_head_of_every_shard(
    diffusion: DiffusionModel, classifier: TinyClassifier
) -> None:
    p = params(embedding_head=True, lam=500.0)
    # the same noise (seed) with heads seeded differently differ; with the same head seed they agree
    a = generate(diffusion, classifier, params=p, count=3, seed=1, head_seed=7)
    b = generate(diffusion, classifier, params=p, count=3, seed=1, head_seed=7)
    c = generate(diffusion, classifier, params=p, count=3, seed=1, head_seed=8)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)


def test_guidance_features_come_from_the_feature_extractor_and_labels_from_the_classifier(
    diffusion: DiffusionModel, classifier: TinyClassifier
) -> None:
    other = TinyClassifier(seed=5).eval()
    calls = {"classifier": 0, "extractor": 0}

    def counted(model: TinyClassifier, name: str) -> None:
        plain = model.features

        def features(x: torch.Tensor) -> torch.Tensor:
            calls[name] += 1
            return plain(x)

        model.features = features  # type: ignore[method-assign]

    own = generate(diffusion, classifier, params=params(), count=3, seed=2)
    counted(other, "extractor")
    counted(classifier, "classifier")
    try:
        generate(diffusion, classifier, params=params(loss="none"), count=3, seed=2)
        labelling_calls, calls["classifier"] = calls["classifier"], 0  # what pseudo-labelling alone costs
        guided = generate(diffusion, classifier, params=params(), count=3, seed=2, feature_extractor=other)
    finally:
        del classifier.features  # back to the class's method
    assert calls["extractor"] >= params().steps - 1  # every guided step asked the extractor
    assert labelling_calls > 0 and calls["classifier"] == labelling_calls  # the classifier only labels
    assert not np.array_equal(own.images, guided.images)
    with torch.no_grad():
        expected = classifier(torch.from_numpy(guided.images).permute(0, 3, 1, 2).float() / 255).argmax(1)
    np.testing.assert_array_equal(guided.labels, expected.numpy())
