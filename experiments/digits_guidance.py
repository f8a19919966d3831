"""Contrastive guidance on real images, small enough for a CPU: scikit-learn digits (16 x 16, 1 channel).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/digits_guidance.py [--count 500] [--seeds 2]

1. Train (or reuse from var/digits-guidance/) a small epsilon-UNet (diffusers UNet2DModel, saved in the
   pipeline layout and re-loaded with ``core.diffusion.load_diffusion_model``) and a small CNN classifier.
2. For each guidance setting, ``core.generation.generate`` ``count`` images from the same seeds and score them
   with ``sample_metrics`` (confidence, entropy, feature separability margin, mean feature cosine).
3. Usefulness: train a fresh small CNN only on each pseudo-labelled synthetic set and report its accuracy on
   the real test split.

The models are self-contained here (not the project's presets) so the measurement does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from torch import nn

from core.data import load_dataset
from core.data.images import to_unit
from core.diffusion import load_diffusion_model
from core.generation import GenerationParams, generate
from core.quality import sample_metrics

log = logging.getLogger("digits_guidance")


class CNN(nn.Module):
    """Two conv blocks -> 64-d penultimate features -> 10 logits; inputs in [0, 1]."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 16, 64),
            nn.ReLU(),
        )
        self.fc = nn.Linear(64, num_classes)
        self.num_classes, self.feature_dim = num_classes, 64

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def to_float(images: np.ndarray) -> torch.Tensor:
    return to_unit(images)


def train_cnn(images: np.ndarray, labels: np.ndarray, *, epochs: int, seed: int) -> CNN:
    torch.manual_seed(seed)
    model = CNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = to_float(images), torch.from_numpy(labels).long()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(to_float(images)).argmax(1).numpy() == labels).mean())


def train_unet(images: np.ndarray, out: Path, *, steps: int, seed: int) -> None:
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    alphas = sched.alphas_cumprod
    x_all = to_float(images) * 2 - 1
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=1e-4)
    g = torch.Generator().manual_seed(seed)
    unet.train()
    started = time.time()
    for step in range(steps):
        idx = torch.randint(len(x_all), (48,), generator=g)
        x0 = x_all[idx]
        t = torch.randint(1000, (48,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
        if (step + 1) % 200 == 0:
            log.info("unet step %d/%d loss %.4f (%.0fs)", step + 1, steps, float(loss), time.time() - started)
    DDPMPipeline(unet=unet.eval(), scheduler=sched).save_pretrained(out)


SETTINGS: list[tuple[str, dict]] = [
    ("vanilla", {"loss": "none", "lam": 0.0}),
    *[(f"hnm previous x_t lam={lam:g}", {"lam": lam}) for lam in (1e2, 1e3, 1e4)],
    *[(f"hnm previous x0_hat lam={lam:g}", {"lam": lam, "feature_on": "x0_hat"}) for lam in (1e3, 1e4)],
    *[(f"hnm+head previous lam={lam:g}", {"lam": lam, "embedding_head": True}) for lam in (1e3, 1e4)],
    ("infonce previous lam=1e3", {"loss": "infonce", "tau": 0.1, "lam": 1e3}),
    ("hnm class_conditional lam=1e4", {"strategy": "class_conditional", "lam": 1e4}),
    ("hnm real_positive lam=1e3", {"strategy": "real_positive", "lam": 1e3}),
    ("hnm real_negative lam=1e3", {"strategy": "real_negative", "lam": 1e3}),
    *[(f"hnm tau=10 previous lam={lam:g}", {"tau": 10.0, "lam": lam}) for lam in (1e3, 1e4, 1e5)],
]


def figure(work: Path, path: Path, names: list[str]) -> None:
    """Rows of the first 20 images (seed 0) of each setting, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(names), 1, figsize=(8, 0.62 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        with np.load(work / f"{name.replace(' ', '_')}.npz") as z:
            images = z["image"][:20, :, :, 0]
        ax.imshow(np.concatenate(list(images), axis=1), cmap="gray", vmin=0, vmax=255)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    plt.close(fig)
    from PIL import Image

    Image.open(path).convert("L").save(path, optimize=True)  # grayscale content: keep the PNG small


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--unet-steps", type=int, default=1500)
    parser.add_argument("--work", type=Path, default=Path("var/digits-guidance"))
    parser.add_argument("--out", type=Path, default=Path("docs/data/digits-guidance.json"))
    parser.add_argument("--figure-only", action="store_true", help="only redraw docs/img/digits-guidance.png")
    parser.add_argument("--only", default=None, help="run only settings whose name contains this text")
    args = parser.parse_args()
    if args.figure_only:
        figure(args.work, Path("docs/img/digits-guidance.png"), [name for name, _ in SETTINGS])
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    if not (args.work / "pipe" / "model_index.json").exists():
        train_unet(train.images, args.work / "pipe", steps=args.unet_steps, seed=0)
    diffusion = load_diffusion_model(args.work / "pipe")
    classifier = train_cnn(train.images, train.labels, epochs=15, seed=0)
    base_acc = accuracy(classifier, test.images, test.labels)
    real_subset = train.images[: args.count]
    real_only = accuracy(
        train_cnn(real_subset, train.labels[: args.count], epochs=15, seed=1), test.images, test.labels
    )
    log.info("classifier test accuracy %.4f; CNN on %d real images: %.4f", base_acc, args.count, real_only)
    results: dict[str, dict] = {
        "_reference": {
            "classifier_test_accuracy": base_acc,
            "cnn_on_real_subset_test_accuracy": real_only,
            "real_subset_metrics": sample_metrics(classifier, real_subset, train.labels[: args.count]),
        }
    }
    if args.only is not None and args.out.exists():  # add to an earlier run's results
        results = json.loads(args.out.read_text()) | {"_reference": results["_reference"]}
    for name, kw in SETTINGS:
        if args.only is not None and args.only not in name:
            continue
        per_seed = []
        for seed in range(args.seeds):
            params = GenerationParams(
                **(
                    {
                        "loss": "hnm",
                        "tau": 0.5,
                        "steps": args.steps,
                        "schedule": "uniform",
                        "guidance_window": None,
                        "batch_size": 250,
                    }
                    | kw
                )
            )
            started = time.time()
            out = generate(
                diffusion, classifier, params=params, count=args.count, seed=seed, real_images=train.images
            )
            elapsed = time.time() - started
            m = sample_metrics(classifier, out.images, out.labels)
            m["downstream_test_accuracy"] = accuracy(
                train_cnn(out.images, out.labels, epochs=15, seed=1), test.images, test.labels
            )
            m["seconds"] = elapsed
            per_seed.append(m)
            if seed == 0:
                np.savez_compressed(
                    args.work / f"{name.replace(' ', '_')}.npz",
                    image=out.images[:100],
                    label=out.labels[:100],
                )
        keys = [k for k in per_seed[0] if isinstance(per_seed[0][k], float)]
        results[name] = {
            k: {
                "mean": float(np.mean([p[k] for p in per_seed])),
                "std": float(np.std([p[k] for p in per_seed])),
            }
            for k in keys
        }
        results[name]["class_histogram_seed0"] = per_seed[0]["class_histogram"]
        log.info(
            "%s: %s", name, {k: round(v["mean"], 4) for k, v in results[name].items() if isinstance(v, dict)}
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    figure(args.work, Path("docs/img/digits-guidance.png"), [name for name, _ in SETTINGS])


if __name__ == "__main__":
    main()
