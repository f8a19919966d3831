"""core.quality.sample_quality / train_on_synthetic_test_on_real: quality numbers that do not come from the
classifier that made the pseudo-labels (judge agreement, TV outliers, near-duplicates, class balance,
TSTR)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from core.data import load_dataset
from core.quality import (
    DUPLICATE_THRESHOLD,
    class_balance,
    nearest_real_distance,
    sample_quality,
    total_variation,
    train_on_synthetic_test_on_real,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FixedJudge(nn.Module):
    """Returns fixed logits per call position: sample i gets one-hot logits for ``preds[i]``."""

    def __init__(self, preds: list[int], num_classes: int) -> None:
        super().__init__()
        one_hot = torch.nn.functional.one_hot(torch.tensor(preds), num_classes).float()
        self.logits = nn.Parameter(one_hot * 5.0, requires_grad=False)
        self.seen: list[tuple[float, float, bool]] = []
        self.offset = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((float(x.min()), float(x.max()), self.training))
        out = self.logits[self.offset : self.offset + x.shape[0]]
        self.offset += x.shape[0]
        return out


def smooth_images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    """Horizontal ramps of random slope: TV well below uniform noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)[None, None, :, None]
    slope = rng.uniform(0.3, 1.0, size=(n, 1, 1, 1))
    img = np.broadcast_to(ramp * slope, (n, size, size, 1))
    return np.round(img * 255).astype(np.uint8)


def test_label_agreement_absent_without_judge() -> None:
    images = smooth_images(6)
    q = sample_quality(images, np.zeros(6, dtype=np.int64), real_images_uint8_nhwc=smooth_images(4, seed=1),
                       num_classes=3)
    assert q["label_agreement"] is None and q["label_agreement_source"] == "absent"


def test_label_agreement_with_judge_is_the_hand_share() -> None:
    images = smooth_images(8)
    images[0] = 255  # a bright pixel somewhere so the [0, 1] range is visible to the judge
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    preds = [0, 1, 2, 2, 2, 2, 0, 0]  # agrees on samples 0, 1, 2, 5, 6 -> 5 / 8
    judge = FixedJudge(preds, num_classes=3)
    q = sample_quality(images, labels, real_images_uint8_nhwc=smooth_images(4, seed=1), judge=judge,
                       num_classes=3)
    assert q["label_agreement_source"] == "judge"
    assert q["label_agreement"] == pytest.approx(5 / 8)
    assert min(s[0] for s in judge.seen) >= 0.0 and max(s[1] for s in judge.seen) == 1.0  # fed [0, 1]
    assert not any(s[2] for s in judge.seen) and judge.training  # called in eval mode, mode restored
    with pytest.raises(ValueError, match="logits"):
        sample_quality(images, labels, real_images_uint8_nhwc=smooth_images(4, seed=1),
                       judge=FixedJudge(preds, num_classes=3), num_classes=4)


def test_speckle_is_an_outlier_smooth_images_are_not() -> None:
    real = smooth_images(20, seed=1)
    noise = np.random.default_rng(0).integers(0, 256, size=(1, 8, 8, 1), dtype=np.uint8)
    samples = np.concatenate([smooth_images(3, seed=2), noise])
    tv = total_variation(samples)
    assert tv[:3].max() < tv[3]
    q = sample_quality(samples, np.zeros(4, dtype=np.int64), real_images_uint8_nhwc=real, num_classes=2)
    assert q["tv_real_max"] == pytest.approx(total_variation(real).max())
    assert q["outliers"] == 1 and q["outlier_fraction"] == pytest.approx(0.25)
    assert q["tv_mean"] == pytest.approx(tv.mean())


def test_total_variation_hand_value() -> None:
    img = np.zeros((1, 2, 3, 1), dtype=np.uint8)
    img[0, :, 1] = 255  # columns 0 | 1 | 0: horizontal diffs 1, 1 per row -> mean 1; vertical 0
    assert total_variation(img)[0] == pytest.approx(1.0)
    img = np.zeros((1, 2, 2, 1), dtype=np.uint8)
    img[0, 0, 0] = 255  # horizontal diffs (1, 0) -> 0.5; vertical (1, 0) -> 0.5
    assert total_variation(img)[0] == pytest.approx(1.0)


def test_exact_copy_is_a_near_duplicate_distinct_image_is_not() -> None:
    train = load_dataset("digits", "train").images
    test = load_dataset("digits", "test").images
    samples = np.stack([train[17], test[0], test[1]])
    d = nearest_real_distance(samples, train, chunk=2, real_chunk=100)  # several chunks on both sides
    assert d[0] < 1e-3 and d[1:].min() > DUPLICATE_THRESHOLD
    q = sample_quality(samples, np.zeros(3, dtype=np.int64), real_images_uint8_nhwc=train, num_classes=10)
    assert q["near_duplicates"] == 1 and q["near_duplicate_fraction"] == pytest.approx(1 / 3)
    assert q["nn_distance_median"] == pytest.approx(np.median(d), abs=1e-6)
    # RMS units: an image against an all-black one is sqrt(mean(x^2)).
    one = np.full((1, 4, 4, 1), 51, dtype=np.uint8)
    assert nearest_real_distance(one, np.zeros((2, 4, 4, 1), dtype=np.uint8))[0] == pytest.approx(0.2)


def test_class_balance_of_a_known_histogram() -> None:
    labels = np.array([0] * 6 + [1] * 2 + [2] * 2)  # shares 0.6, 0.2, 0.2, 0 over 4 classes
    got = class_balance(labels, num_classes=4)
    entropy = -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2))
    assert got["class_entropy_normalized"] == pytest.approx(entropy / math.log(4))
    assert got["class_share_min"] == 0.0 and got["class_share_max"] == pytest.approx(0.6)
    balanced = class_balance(np.arange(10) % 5, num_classes=5)
    assert balanced["class_entropy_normalized"] == pytest.approx(1.0)
    assert balanced["class_share_min"] == balanced["class_share_max"] == pytest.approx(0.2)
    q = sample_quality(smooth_images(10), labels, real_images_uint8_nhwc=smooth_images(3), num_classes=4)
    assert q["class_entropy_normalized"] == pytest.approx(entropy / math.log(4))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        class_balance(np.array([0, 4]), num_classes=4)


def test_sample_quality_rejects_bad_inputs() -> None:
    images = smooth_images(3)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        sample_quality(images, np.zeros(2), real_images_uint8_nhwc=images, num_classes=2)
    with pytest.raises(ValueError, match="real images"):
        sample_quality(images, np.zeros(3), real_images_uint8_nhwc=smooth_images(3, size=4), num_classes=2)
    with pytest.raises(ValueError, match="empty"):
        sample_quality(images, np.zeros(3), real_images_uint8_nhwc=images[:0], num_classes=2)


def test_tstr_on_real_digits_beats_chance_and_is_deterministic() -> None:
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    kwargs = dict(num_classes=10, epochs=2, seed=0)
    acc = train_on_synthetic_test_on_real(train.images, train.labels, test.images, test.labels, **kwargs)
    assert 0.0 <= acc <= 1.0
    assert acc > 0.5  # chance is 0.1
    again = train_on_synthetic_test_on_real(train.images, train.labels, test.images, test.labels, **kwargs)
    assert again == acc
    # Labels that carry no information leave it near chance.
    shuffled = np.random.default_rng(0).permutation(train.labels)
    noise = train_on_synthetic_test_on_real(train.images, shuffled, test.images, test.labels, **kwargs)
    assert noise < acc - 0.3


def test_sample_warnings_name_each_problem_and_stay_quiet_on_good_sets() -> None:
    from core.quality import sample_warnings

    good = {"outlier_fraction": 0.0, "near_duplicate_fraction": 0.0, "label_agreement": 0.97,
            "class_share_min": 0.09, "class_share_max": 0.11}
    assert sample_warnings(good, num_classes=10) == []
    assert sample_warnings({}, num_classes=10) == []  # nothing measured, nothing claimed
    assert sample_warnings({**good, "label_agreement": None, "outlier_fraction": float("nan")},
                           num_classes=10) == []
    bad = {"outlier_fraction": 0.87, "near_duplicate_fraction": 0.2, "label_agreement": 0.5,
           "class_share_min": 0.01, "class_share_max": 0.3}
    found = sample_warnings(bad, num_classes=10)
    assert [w.split(":")[0] for w in found] == ["outliers", "near-copies", "labels", "class imbalance"]
    assert "87 %" in found[0]
    assert sample_warnings({**good, "class_share_max": 0.21}, num_classes=10)[0].startswith("class imbalance")
