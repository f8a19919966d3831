"""TRADES on digits with real data only, + vanilla DDIM samples, + Contrastive-DP samples (docs/RESULTS.md).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/results_digits.py \
        --diffusion var/models/digits-diffusion --classifier var/models/digits-classifier

1. Generate ``--count`` images twice from the same seeds (hence the same x_T): vanilla DDIM (loss "none") and
   Contrastive-DP (HNM guidance, paper Algorithm 1), pseudo-labelled by the standard classifier
   (``core.generation.generate``); cached as npz under ``--work``.
2. For every seed: TRADES (``core.training.trades.train_trades``) on the real training split alone, and with
   each synthetic set mixed in at the same batch fraction; same steps, batch size and schedule in all arms.
3. The checkpoint chosen by PGD accuracy on the validation split is attacked on the test split
   (``core.training.robustness.evaluate_robustness``: PGD-CE, PGD-CW, per-sample worst case, sanity checks).

Everything is cached: re-running skips finished generations and training runs (they resume from their
checkpoints). Output: a JSON file with every run and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.data import ImageDataset, load_dataset, load_npz
from core.diffusion import load_diffusion_model
from core.experiment_report.statistics import describe
from core.generation import GenerationParams, generate
from core.models import load_classifier
from core.quality import sample_metrics
from core.training.robustness import evaluate_robustness
from core.training.trades import TradesConfig, train_trades

log = logging.getLogger("results_digits")

ARMS = ("real only", "+ vanilla DDIM", "+ Contrastive-DP")


def cdp_name(args: argparse.Namespace) -> str:
    """File and run name of the guided arm; the default guidance (lambda 1e3, tau 0.5) is plain "cdp"."""
    return "cdp" if (args.lam, args.tau) == (1e3, 0.5) else f"cdp-lam{args.lam:g}-tau{args.tau:g}"


def generate_set(args: argparse.Namespace, *, guided: bool, out: Path) -> dict[str, Any]:
    """Generate (or reuse) one synthetic set; returns its sample metrics and timing."""
    meta_path = out.with_suffix(".json")
    if out.exists() and meta_path.exists():
        return json.loads(meta_path.read_text())
    diffusion = load_diffusion_model(args.diffusion)
    classifier = load_classifier(args.classifier)
    params = GenerationParams(
        loss="hnm" if guided else "none", lam=args.lam if guided else 0.0, tau=args.tau,
        tau_plus=args.tau_plus, beta=args.hnm_beta, strategy="previous", steps=args.ddim_steps,
        schedule="uniform", eta=0.0, guidance_window=None, batch_size=args.gen_batch,
    )
    started = time.perf_counter()
    result = generate(diffusion, classifier, params=params, count=args.count, seed=args.gen_seed)
    seconds = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    result.save_npz(out)
    metrics = sample_metrics(classifier, result.images, result.labels)
    meta = {"params": params.to_dict(), "seconds": round(seconds, 1), "metrics": metrics, "path": str(out)}
    meta_path.write_text(json.dumps(meta, indent=2, default=float) + "\n")
    return meta


def trades_config(args: argparse.Namespace) -> TradesConfig:
    return TradesConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, eps=args.eps, step_size=args.eps / 4,
        steps=args.attack_steps, beta=6.0, arch="small_cnn", arch_options={"width": args.width},
        eval_steps=10, eval_max=1024, synthetic_fraction=args.synthetic_fraction, mixing="batch",
    )


def _same_run(saved: dict[str, Any], current: dict[str, Any], *, real_only: bool) -> bool:
    """Whether a cached run used these settings (the mixing options do not matter without synthetic data)."""
    ignored = {"synthetic_fraction", "mixing", "eta"} if real_only else set()
    current = json.loads(json.dumps(current))  # tuples -> lists, as read back from JSON
    return {k: v for k, v in saved.items() if k not in ignored} == {
        k: v for k, v in current.items() if k not in ignored
    }


def run_arm(
    args: argparse.Namespace,
    arm: str,
    seed: int,
    synthetic: ImageDataset | None,
    splits: dict[str, ImageDataset],
) -> dict[str, Any]:
    slug = {"real only": "real", "+ vanilla DDIM": "vanilla", "+ Contrastive-DP": cdp_name(args)}[arm]
    if synthetic is not None and args.synthetic_fraction != 0.7:
        slug += f"-f{args.synthetic_fraction:g}"
    out = args.work / "trades" / f"{slug}-seed{seed}"
    done = out / "result.json"
    config = trades_config(args)
    if done.exists():
        row = json.loads(done.read_text())
        if not _same_run(row.get("trades_config", {}), asdict(config), real_only=synthetic is None):
            raise SystemExit(f"{done} was made with other TRADES settings; use another --work directory")
        return row
    started = time.perf_counter()
    metrics = train_trades(
        splits["train"], splits["val"], synthetic=synthetic, config=config, out_dir=out,
        seed=seed,
    )
    model = load_classifier(metrics["model_dir"])
    test = evaluate_robustness(model, splits["test"], eps=args.eps, steps=args.eval_steps, seed=seed)
    row = {
        "arm": arm,
        "seed": seed,
        "best_epoch": metrics["best_epoch"],
        "train_seconds": metrics["train_seconds"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "val_pgd_acc": metrics["best_val_pgd_acc"],
        "test": test,
        "trades_config": asdict(config),
    }
    done.write_text(json.dumps(row, indent=2) + "\n")
    log.info("%s seed %d: %s", arm, seed, {k: test[k] for k in ("clean_acc", "pgd_ce_acc", "robust_acc")})
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        entry: dict[str, Any] = {"arm": arm, "seeds": [r["seed"] for r in mine]}
        for key in ("clean_acc", "pgd_ce_acc", "pgd_cw_acc", "robust_acc"):
            values = [100 * r["test"][key] for r in mine]
            stats = describe(values)  # the product's statistics, as the experiment reports use
            entry[key] = {"mean": stats["mean"], "std": stats["std"] if stats["std"] is not None else 0.0,
                          "ci95": stats["ci95"], "values": values}
        table.append(entry)
    return table


def markdown(table: list[dict[str, Any]], args: argparse.Namespace) -> str:
    k = args.eval_steps
    lines = [
        f"| training data | clean % | PGD-{k} CE % | PGD-{k} CW % | worst case % |",
        "| --- | --- | --- | --- | --- |",
    ]
    for entry in table:
        cells = [f"{entry[k]['mean']:.1f} ± {entry[k]['std']:.1f}"
                 for k in ("clean_acc", "pgd_ce_acc", "pgd_cw_acc", "robust_acc")]  # fmt: skip
        lines.append(f"| {entry['arm']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, every option spelled out."""
    parts = ["OMP_NUM_THREADS=1 .venv/bin/python experiments/results_digits.py"]
    for key, value in vars(args).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts += [flag] if value else []
        elif isinstance(value, list):
            parts.append(f"{flag} {' '.join(map(str, value))}")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--diffusion", type=Path, default=Path("var/models/digits-diffusion"))
    parser.add_argument("--classifier", type=Path, default=Path("var/models/digits-classifier"))
    parser.add_argument("--work", type=Path, default=Path("var/results-digits"))
    parser.add_argument("--out", type=Path, default=Path("docs/data/trades-digits.json"))
    parser.add_argument("--count", type=int, default=1500, help="synthetic images per generated set")
    parser.add_argument("--gen-seed", type=int, default=0)
    parser.add_argument("--gen-batch", type=int, default=250)
    parser.add_argument("--ddim-steps", type=int, default=25)
    parser.add_argument("--lam", type=float, default=1e3, help="guidance weight lambda (Algorithm 1)")
    parser.add_argument("--tau", type=float, default=0.5)
    parser.add_argument("--tau-plus", type=float, default=0.1)
    parser.add_argument("--hnm-beta", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--eps", type=float, default=0.1, help="L-inf radius in [0, 1] units")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--attack-steps", type=int, default=5)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--eval-steps", type=int, default=20)
    parser.add_argument("--real-only", action="store_true", help="run only the real-data arm and stop")
    parser.add_argument("--synthetic-fraction", type=float, default=0.7, help="synthetic share of a batch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)

    splits = {split: load_dataset("digits", split) for split in ("train", "val", "test")}
    rows = [run_arm(args, "real only", seed, None, splits) for seed in args.seeds]  # needs no samples
    if args.real_only:
        return
    samples = args.work / "samples"
    generated = {
        "+ vanilla DDIM": generate_set(args, guided=False, out=samples / "vanilla.npz"),
        "+ Contrastive-DP": generate_set(args, guided=True, out=samples / f"{cdp_name(args)}.npz"),
    }
    synthetic = {
        arm: load_npz(meta["path"], num_classes=10, name=arm) for arm, meta in generated.items()
    }
    for seed in args.seeds:
        for arm in ARMS[1:]:
            rows.append(run_arm(args, arm, seed, synthetic[arm], splits))
    table = summarise(rows)
    reference = evaluate_robustness(
        load_classifier(args.classifier), splits["test"], eps=args.eps, steps=args.eval_steps, seed=0
    )
    document = {
        "eps": args.eps,
        "standard_classifier_test": reference,
        "trades_config": asdict(trades_config(args)),
        "generation": generated,
        "synthetic_class_histograms": {arm: np.bincount(d.labels, minlength=10).tolist()
                                       for arm, d in synthetic.items()},  # fmt: skip
        "summary": table,
        "runs": rows,
        "command": command_line(args),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, default=float) + "\n")
    print(markdown(table, args))
    print(f"standard classifier (the pseudo-labeller, no adversarial training): clean "
          f"{100 * reference['clean_acc']:.1f} %, PGD-{args.eval_steps} CE "
          f"{100 * reference['pgd_ce_acc']:.1f} %, "
          f"worst case {100 * reference['robust_acc']:.1f} %")


if __name__ == "__main__":
    main()
