"""Does a separately trained classifier recognise the tiny DDPM's digits? (docs/RESULTS.md, "Diffusion and
classifier on digits").

Reads a set written by ``cdp generate`` and the classifier that labelled it, then reports
1. the classifier's confidence on real test digits, on the generated set and on uniform noise images
   (a classifier that is confident on anything would make the first number meaningless);
2. "train on synthetic, test on real": a fresh SmallCNN trained only on the generated images with their
   pseudo-labels, tested on the real test split, beside the same recipe on as many real training images.

Usage (after the commands in docs/RESULTS.md):
    OMP_NUM_THREADS=1 .venv/bin/python experiments/digits_diffusion_evidence.py \
        --synthetic var/synthetic/digits-ddim --classifier var/models/digits-classifier \
        --json docs/data/digits-diffusion.json --grid docs/img/digits-ddim-samples.png
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from core.data import ImageDataset, load_dataset, load_synthetic
from core.data.images import grid_png, to_unit
from core.models import load_classifier
from core.training.classifier import ClassifierTrainConfig, evaluate_accuracy, train_classifier


def confidence_summary(classifier: torch.nn.Module, images: np.ndarray) -> dict[str, object]:
    x = to_unit(images)
    with torch.no_grad():
        probs = torch.softmax(classifier(x), dim=1)
    confidence, labels = probs.max(dim=1)
    return {
        "count": len(images),
        "mean_confidence": round(float(confidence.mean()), 4),
        "fraction_confidence_above_0.9": round(float((confidence > 0.9).float().mean()), 4),
        "class_histogram": np.bincount(labels.numpy(), minlength=probs.shape[1]).tolist(),
    }


def train_on(train: ImageDataset, val: ImageDataset, test: ImageDataset, *, seed: int, epochs: int) -> float:
    config = ClassifierTrainConfig(epochs=epochs, lr=2e-3, augment=True)
    with tempfile.TemporaryDirectory() as tmp:
        train_classifier(train, val, config=config, out_dir=tmp, seed=seed)
        return evaluate_accuracy(load_classifier(tmp), test)["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=Path, required=True)
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--grid", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    classifier = load_classifier(args.classifier)
    train, val, test = (load_dataset("digits", split) for split in ("train", "val", "test"))
    synthetic = load_synthetic([args.synthetic], num_classes=10, name="digits-ddim")
    noise = np.random.default_rng(0).integers(0, 256, size=synthetic.images.shape, dtype=np.uint8)
    report: dict[str, object] = {
        "classifier_on_real_test": confidence_summary(classifier, test.images),
        "classifier_on_generated": confidence_summary(classifier, synthetic.images),
        "classifier_on_uniform_noise": confidence_summary(classifier, noise),
    }
    n = min(len(synthetic), len(train))
    real_subset = train.subset(np.random.default_rng(0).permutation(len(train))[:n])
    generated_subset = synthetic.subset(range(n))
    report["train_on_generated_test_on_real"] = [
        round(train_on(generated_subset, val, test, seed=s, epochs=args.epochs), 4) for s in args.seeds
    ]
    report["train_on_real_same_count_test_on_real"] = [
        round(train_on(real_subset, val, test, seed=s, epochs=args.epochs), 4) for s in args.seeds
    ]
    report["images_per_training_set"] = n
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.grid is not None:
        # top five rows: real training digits; bottom five rows: the first 50 generated digits
        rows = np.concatenate([train.images[:50], synthetic.images[:50]])
        args.grid.write_bytes(grid_png(rows, columns=10, max_images=100, scale=3))


if __name__ == "__main__":
    main()
