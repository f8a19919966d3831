"""The MNIST-5k study (docs/RESULTS.md): does Contrastive-DP's synthetic data raise TRADES robust accuracy?

Every stage is one subcommand; each prints one JSON object as the last line of its standard output, and
caches what it made under ``--work`` (default ``var/mnist5k``) so later stages reuse it. Each stage builds
what it needs from earlier stages on its own (deterministically: fixed seeds, one torch thread), so any
single ``run`` regenerates its result from a fresh clone after ``make install``:

    python experiments/mnist5k.py run --arm R --seed 0            # one run of one arm
    python experiments/mnist5k.py gate1 --seed 0                  # R/2, R, R+O at the same step budget
    python experiments/mnist5k.py generator                       # the DDPM on R, then gate 2
    python experiments/mnist5k.py sweep                           # Contrastive-DP's working region
    experiments/mnist5k.sh                                        # everything, in order

The protocol's settings live in :data:`PROTOCOL` and were fixed on validation data (gate 1 and the sweep
read only the validation split and sample metrics); the test split is read only by the final evaluation
of each run. Images are the documented cheaper option, mnist5k16 (28 x 28 padded to 32, pooled to 16).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATASET = "mnist5k16"

# Fixed before any comparison (see docs/RESULTS.md, "Gate 1"): eps, the TRADES attack and the step budget.
# Pilots (R, seed 0, 300 steps, validation only): lr 0.1 stayed at chance at eps 0.1 and 0.2 (the trainer's
# default is tuned for CIFAR-10); lr 0.02 at eps 0.2 learned (val clean 91 %, PGD 33 % and rising). A first
# gate 1 at eps 0.15 without warm-up: R reached val PGD 72 % but R/2 (1 %) and R+O (14 %, clean 57 %) stayed
# on the plateau where TRADES' KL term keeps the model near chance, so eps now ramps up over the first 30 %.
PROTOCOL: dict[str, Any] = {
    "eps": 0.15,
    "trades": {"epochs": 10, "steps_per_epoch": 80, "batch_size": 64, "attack_steps": 5, "lr": 0.02,
               "step_size": 0.075, "beta": 6.0, "arch_options": {"width": 16}, "eps_warmup": 0.3},
    # Every attack on every test image, and the headline worst case is the per-sample worst over all three
    # (AutoAttack included). Until 2026-12-03 AutoAttack ran on the first 500 test images only, which the
    # class-sorted split made digits 0-4, and the worst case left it out; those figures are withdrawn.
    "eval": {"steps": 20, "limit": None, "attacks": ("pgd_ce", "pgd_cw", "autoattack"), "autoattack": "fast"},
}
EVALUATION_FILE = "evaluation-all-attacks.json"  # the cache of the protocol above (not the withdrawn one)


@dataclass(frozen=True)
class Arm:
    name: str
    real: str = "R"  # R, R/2 or R+O
    synthetic: str | None = None  # None, "vanilla" or a Contrastive-DP config name
    fraction: float = 0.0
    mixing: str = "batch"
    epochs_scale: int = 1  # x the protocol's epochs (the same steps per epoch): a longer budget


ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("R"),
    Arm("R/2", real="R/2"),
    Arm("R+O", real="R+O"),
    Arm("R (3x steps)", epochs_scale=3),
    Arm("R+O (3x steps)", real="R+O", epochs_scale=3),
    # the arms train at the budget gate 1 passed at: 3x the gate's 800 steps
    Arm("R+vanilla@0.3", synthetic="vanilla", fraction=0.3, epochs_scale=3),
    Arm("R+vanilla@0.7", synthetic="vanilla", fraction=0.7, epochs_scale=3),
    Arm("R+CDP@0.3", synthetic="cdp", fraction=0.3, epochs_scale=3),
    Arm("R+CDP@0.7", synthetic="cdp", fraction=0.7, epochs_scale=3),
    Arm("R+CDP@eq3", synthetic="cdp", fraction=0.5, mixing="loss", epochs_scale=3),
)}


def _torch_setup() -> None:
    import os

    import torch

    os.environ.setdefault("CDP_MAX_EPOCHS", "1000")  # the service's default cap (400) is below the generator

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, sort_keys=True))


# ------------------------------------------------------------------------------------------------ TRADES


def trades_spec(arm: Arm, seed: int, synthetic_count: int) -> Any:
    from core.specs import TrainSpec

    t = PROTOCOL["trades"]
    return TrainSpec(
        kind="trades", dataset=DATASET, seed=seed, epochs=t["epochs"] * arm.epochs_scale,
        steps_per_epoch=t["steps_per_epoch"],
        batch_size=t["batch_size"], attack_steps=t["attack_steps"], step_size=t["step_size"], lr=t["lr"],
        beta=t["beta"], eps=PROTOCOL["eps"], arch_options=t["arch_options"], oracle=arm.real == "R+O",
        eps_warmup=t["eps_warmup"],
        real_subset=500 if arm.real == "R/2" else None, synthetic_fraction=arm.fraction, mixing=arm.mixing,
        eval_attack_steps=10, eval_samples=500, final_eval=False,
    )


def train_arm(work: Path, arm: Arm, seed: int) -> dict[str, Any]:
    """TRADES for one (arm, seed), cached in work/runs/<arm>/<seed>; the metrics of core.training.trades."""
    from core.jobs.training import train_for_spec

    synthetic_dirs: list[Path] = []
    if arm.synthetic is not None:
        synthetic_dirs = [synthetic_set(work, arm.synthetic)]
    out = work / "runs" / arm.name.replace("/", "_") / str(seed)
    done = out / "metrics.json"
    if done.exists():
        return json.loads(done.read_text())
    spec = trades_spec(arm, seed, 0)
    began = time.perf_counter()
    metrics = train_for_spec(spec, out_dir=out, data_root=work, device="cpu",
                             progress=lambda _e: None, synthetic_dirs=synthetic_dirs)
    metrics["wall_s"] = round(time.perf_counter() - began, 1)
    done.write_text(json.dumps(metrics, default=str))
    return metrics


def evaluate_model(model_dir: Path, *, split: str, autoattack: bool, seed: int) -> dict[str, Any]:
    """Clean, PGD-20 CE, PGD-20 CW and (``autoattack``) AutoAttack on every image of ``split``, and the
    per-sample worst over every attack that ran, all on the same images."""
    from core.data import load_dataset
    from core.models import load_classifier
    from core.training.robustness import per_sample_robustness

    e = PROTOCOL["eval"]
    model = load_classifier(model_dir).eval()
    data = load_dataset(DATASET, split)  # type: ignore[arg-type]
    x, y = data.subset(data.limit_index(e["limit"])).to_tensors("cpu")
    attacks = tuple(a for a in e["attacks"] if autoattack or a != "autoattack")
    began = time.perf_counter()
    masks = per_sample_robustness(model, x, y, eps=PROTOCOL["eps"], attacks=attacks, steps=e["steps"],
                                  autoattack_version=e["autoattack"], seed=seed)
    out: dict[str, Any] = {name: float(masks[name].float().mean()) for name in ("clean", *attacks, "worst")}
    out.update(count=int(len(y)), attacks=list(attacks), seconds=round(time.perf_counter() - began, 1))
    if "autoattack" in attacks:  # what AutoAttack found that PGD-20 missed, on the same images
        pgd = masks["pgd_ce"] & masks["pgd_cw"]
        out["broken_by_autoattack_only"] = int((pgd & ~masks["autoattack"]).sum())
    return out


def run(work: Path, arm_name: str, seed: int, *, autoattack: bool = True) -> dict[str, Any]:
    arm = ARMS[arm_name]
    metrics = train_arm(work, arm, seed)
    out = work / "runs" / arm.name.replace("/", "_") / str(seed)
    cached = out / EVALUATION_FILE
    if cached.exists():
        evaluation = json.loads(cached.read_text())
    else:
        evaluation = {  # the last epoch's EMA model, and the checkpoint of the best validation epoch
            "final": evaluate_model(out / "final", split="test", autoattack=autoattack, seed=seed),
            "best_val": evaluate_model(out, split="test", autoattack=False, seed=seed),
        }
        cached.write_text(json.dumps(evaluation))
    final = evaluation["final"]
    command = f"python experiments/mnist5k.py run --arm {shlex.quote(arm.name)} --seed {seed}"
    return {
        "arm": arm.name, "seed": seed, "synthetic_fraction": arm.fraction, "command": command,
        "clean": final["clean"], "pgd_ce": final["pgd_ce"], "pgd_cw": final["pgd_cw"],
        "worst": final["worst"],
        "autoattack": final.get("autoattack"), "best_val_checkpoint": evaluation["best_val"],
        "best_epoch": metrics.get("best_epoch"),
        "val_curve": [round(h["val_pgd_acc"], 4) for h in metrics.get("history", [])],
        "train_seconds": metrics.get("train_seconds"),
    }


def gate1(work: Path, seed: int, *, longer: bool = False) -> dict[str, Any]:
    """R/2, R and R+O at the same step budget (``longer``: R and R+O at 3x the steps): validation curves
    only (the test split is not read)."""
    rows = {}
    for name in (("R (3x steps)", "R+O (3x steps)") if longer else ("R/2", "R", "R+O")):
        metrics = train_arm(work, ARMS[name], seed)
        rows[name] = {"val_curve": [round(h["val_pgd_acc"], 4) for h in metrics["history"]],
                      "val_clean_curve": [round(h["val_clean_acc"], 4) for h in metrics["history"]],
                      "final_val_pgd": metrics["final_val_pgd_acc"],
                      "train_seconds": metrics["train_seconds"]}
    return {"stage": "gate1", "seed": seed, "eps": PROTOCOL["eps"], "trades": PROTOCOL["trades"],
            "arms": rows}


# ------------------------------------------------------------------------------------------ synthetic data


# 16 steps per epoch on R. 300 epochs (4800 steps) failed gate 2 on label agreement (87 % against 95 %, the
# labeller and the judge agree on 95.4 % of real validation images); trained on (resumed) to 600.
GENERATOR = {"epochs": 600, "batch_size": 64, "seed": 0}
# Gate 2 decided the generator of record (sample metrics only): after 9600 steps the unconditional DDPM's
# samples reached 90.8 % judge agreement (fail), the class-conditional one's 97.4 % (pass). Both learn from
# R only; `generator --unconditional` reproduces the failed one.
CONDITIONAL = True
# Chosen on validation accuracy (pilot, seeds 0 / 1): width 16, 30 epochs, no augmentation reached 96.4 %
# (labeller, on R) / 96.0 % (judge, on O), agreeing on 95.4 % of validation images, so a 95 % agreement gate
# would measure the classifiers more than the samples. Width 32, 60 epochs, random shifts: 97.6 % / 99.4 %,
# agreement 97.4 %.
CLASSIFIER = {"epochs": 60, "batch_size": 64, "arch_options": {"width": 32}, "augment": True}
SAMPLING = {"steps": 50, "schedule": "uniform", "batch_size": 250}
GATE2 = {"count": 1000, "seed": 12345, "outliers_below": 0.02, "agreement_at_least": 0.95,
         "class_entropy_at_least": 0.99, "near_duplicates_below": 0.01}


def _train(work: Path, name: str, spec: Any) -> Path:
    """Train the diffusion model once (cached in work/models/<name>) and return its directory."""
    out = work / "models" / name
    done = out / "metrics.json"
    if not done.exists():
        from core.jobs.training import train_for_spec

        began = time.perf_counter()
        metrics = train_for_spec(spec, out_dir=out, data_root=work, device="cpu", progress=lambda _e: None)
        metrics["wall_s"] = round(time.perf_counter() - began, 1)
        done.write_text(json.dumps(metrics, default=str))
    return out


def _train_classifier(work: Path, name: str, split: str, seed: int) -> Path:
    """A CLASSIFIER-configured CNN trained on ``split`` (cached in work/models/<name>)."""
    out = work / "models" / name
    done = out / "metrics.json"
    if not done.exists():
        from core.data import load_dataset
        from core.training.classifier import ClassifierTrainConfig, train_classifier

        began = time.perf_counter()
        data = load_dataset(DATASET, split)  # type: ignore[arg-type]
        metrics = train_classifier(data, load_dataset(DATASET, "val"),
                                   config=ClassifierTrainConfig(**CLASSIFIER), out_dir=out, seed=seed)
        metrics["wall_s"] = round(time.perf_counter() - began, 1)
        done.write_text(json.dumps(metrics, default=str))
    return out


def generator(work: Path, *, conditional: bool = CONDITIONAL) -> Path:
    """The DDPM trained on R only (tiny UNet preset); ``conditional``: the same with class embeddings (its
    samples' classes are drawn balanced; their labels still come from the labeller)."""
    from core.specs import TrainSpec

    spec = TrainSpec(kind="diffusion", dataset=DATASET, unet="tiny", class_conditional=conditional,
                     **GENERATOR)
    return _train(work, "ddpm-cond" if conditional else "ddpm", spec)


def labeller(work: Path) -> Path:
    """The pseudo-labelling classifier (and default feature extractor): a standard CNN trained on R."""
    return _train_classifier(work, "labeller-w32aug", "train", seed=0)


def judge(work: Path) -> Path:
    """An independent judge of label agreement: the same CNN trained on the oracle pool O, not on R."""
    return _train_classifier(work, "judge-w32aug", "oracle", seed=1)


def sample(work: Path, name: str, params: dict[str, Any], *, count: int, seed: int,
           feature_extractor: Path | None = None, conditional: bool = CONDITIONAL) -> dict[str, Any]:
    """Generate ``count`` images with generation params ``params`` (cached as work/sets/<name>/shards/0.npz)
    and return the sample metrics (labeller's and the judge's)."""
    import numpy as np

    from core.data import load_dataset
    from core.diffusion import load_diffusion_model
    from core.generation import GenerationParams, generate
    from core.models import load_classifier
    from core.quality import sample_metrics, sample_quality

    folder = work / "sets" / name
    done = folder / "metrics.json"
    if done.exists():
        return json.loads(done.read_text())
    diffusion = load_diffusion_model(generator(work, conditional=conditional))
    classifier = load_classifier(labeller(work))
    extractor = load_classifier(feature_extractor) if feature_extractor is not None else None
    full = {**SAMPLING, "guidance_window": None, **params}
    began = time.perf_counter()
    result = generate(diffusion, classifier, params=GenerationParams(**full), count=count, seed=seed,
                      feature_extractor=extractor)
    elapsed = time.perf_counter() - began
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    result.save_npz(folder / "shards" / "0.npz")
    train = load_dataset(DATASET, "train")
    metrics = dict(sample_metrics(classifier, result.images, result.labels))
    metrics.update(sample_quality(result.images, result.labels, real_images_uint8_nhwc=train.images,
                                  judge=load_classifier(judge(work)), num_classes=10))
    if result.class_labels is not None:  # a conditional model: how often the labeller reads the asked class
        metrics["condition_agreement"] = float(np.mean(result.class_labels == result.labels))
    metrics.update(name=name, params=full, count=count, seed=seed, seconds=round(elapsed, 1),
                   conditional=conditional,
                   feature_extractor=str(feature_extractor.relative_to(work)) if feature_extractor else None)
    done.write_text(json.dumps(metrics, default=float))
    return metrics


def gate2(work: Path, *, steps: int | None = None, schedule: str | None = None,
          conditional: bool = CONDITIONAL) -> dict[str, Any]:
    """Sample quality of vanilla DDIM from the generator against the gate's thresholds (SAMPLING's DDIM
    steps and schedule, or ``steps`` / ``schedule``: the same noise, a finer sampler; ``conditional``: the
    class-conditional generator)."""
    params: dict[str, Any] = {"loss": "none", "lam": 0.0, "tau": 1.0}
    name = "gate2-vanilla-w32aug"
    if steps is not None or schedule is not None:
        params.update(steps=steps or SAMPLING["steps"], schedule=schedule or SAMPLING["schedule"])
        name += f"-{params['steps']}{params['schedule']}"
    if conditional:
        name += "-cond"
    m = sample(work, name, params, count=GATE2["count"], seed=GATE2["seed"], conditional=conditional)
    checks = {
        "outlier_fraction": m["outlier_fraction"] < GATE2["outliers_below"],
        "label_agreement": m["label_agreement"] >= GATE2["agreement_at_least"],
        "class_entropy_normalized": m["class_entropy_normalized"] >= GATE2["class_entropy_at_least"],
        "near_duplicate_fraction": m["near_duplicate_fraction"] < GATE2["near_duplicates_below"],
    }
    ddpm = json.loads((generator(work, conditional=conditional) / "metrics.json").read_text())
    return {"stage": "gate2", "passed": all(checks.values()), "checks": checks,
            "metrics": {k: m[k] for k in ("outlier_fraction", "label_agreement", "class_entropy_normalized",
                                          "near_duplicate_fraction", "nn_distance_median", "class_histogram",
                                          "mean_confidence", "condition_agreement") if k in m},
            "conditional": conditional,
            "generator": {"steps": ddpm.get("steps"), "train_seconds": ddpm.get("train_seconds"),
                          "final_ema_eval_loss": ddpm.get("final_ema_eval_loss")},
            "thresholds": GATE2}


# The sweep: every configuration samples SWEEP_COUNT images from the same noise (seed); they are judged by
# sample metrics only: the judge's (trained on O, never used for guidance or labels) label agreement and
# feature separability, and outliers. Listed before any of them ran; the selection rule is select_config.
SWEEP_COUNT, SWEEP_SEED = 500, 777
_HNM = {"loss": "hnm", "tau": 0.5, "tau_plus": 0.1, "beta": 1.0}
SWEEP: dict[str, dict[str, Any]] = {
    "vanilla": {"loss": "none", "lam": 0.0, "tau": 1.0},
    "hnm-1e3": {**_HNM, "lam": 1e3},
    "hnm-3e3": {**_HNM, "lam": 3e3},
    "hnm-1e4": {**_HNM, "lam": 1e4},
    "infonce-1e3": {"loss": "infonce", "tau": 0.1, "lam": 1e3},
    "infonce-3e3": {"loss": "infonce", "tau": 0.1, "lam": 3e3},
    "hnm-3e3-head": {**_HNM, "lam": 3e3, "embedding_head": True},
    "hnm-3e3-classcond": {**_HNM, "lam": 3e3, "strategy": "class_conditional"},
    "hnm-3e3-x0hat": {**_HNM, "lam": 3e3, "feature_on": "x0_hat"},
    "hnm-3e3-window400": {**_HNM, "lam": 3e3, "guidance_window": (400, 999)},
    "hnm-3e3-robust": {**_HNM, "lam": 3e3, "robust_features": True},
    # Round 2, added after round 1 froze nothing (every guided configuration lowered the judge's separability
    # margin below vanilla's, the more so the larger lambda): the paper's own defaults, which round 1 lacked,
    # and smaller lambdas towards vanilla, with the guidance window that helped most. Same rule, same noise.
    "paper-hnm": {"loss": "hnm", "tau": 10.0, "tau_plus": 0.1, "beta": 1.0, "lam": 1e5},
    "paper-infonce": {"loss": "infonce", "tau": 0.1, "lam": 2e4},
    "hnm-3e2": {**_HNM, "lam": 3e2},
    "hnm-1e2": {**_HNM, "lam": 1e2},
    "hnm-1e3-window400": {**_HNM, "lam": 1e3, "guidance_window": (400, 999)},
    "hnm-1e3-classcond": {**_HNM, "lam": 1e3, "strategy": "class_conditional"},
}


def _sweep_metrics(work: Path, name: str) -> dict[str, Any]:
    from core.data import load_dataset
    from core.models import load_classifier
    from core.quality import sample_metrics

    params = dict(SWEEP[name])
    extractor = None
    if params.pop("robust_features", False):  # features of an adversarially trained model (R, seed 0)
        train_arm(work, ARMS["R"], 0)
        extractor = work / "runs" / "R" / "0" / "final"
    m = sample(work, f"sweep-{name}", params, count=SWEEP_COUNT, seed=SWEEP_SEED, feature_extractor=extractor)
    folder = work / "sets" / f"sweep-{name}"
    judged = folder / "judge_metrics.json"
    if not judged.exists():
        import numpy as np

        with np.load(folder / "shards" / "0.npz") as npz:
            images, labels = npz["image"], npz["label"]
        jm = sample_metrics(load_classifier(judge(work)), images, labels)
        real = load_dataset(DATASET, "val")
        ref = sample_metrics(load_classifier(judge(work)), real.images, real.labels)
        judged.write_text(json.dumps({"judge_separability_margin": jm["separability_margin"],
                                      "real_val_judge_separability_margin": ref["separability_margin"]}))
    m.update(json.loads(judged.read_text()))
    return m


def select_config(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The rule fixed before the sweep ran: among guided configurations whose outlier share is at most the
    vanilla one's + 1 point and whose judge label agreement is at least vanilla's - 1 point, the two with the
    largest judge separability margin (vanilla's margin must be beaten, else none is frozen)."""
    base = rows["vanilla"]
    ok = [n for n, m in rows.items() if n != "vanilla"
          and m["outlier_fraction"] <= base["outlier_fraction"] + 0.01
          and m["label_agreement"] >= base["label_agreement"] - 0.01
          and m["judge_separability_margin"] > base["judge_separability_margin"]]
    return sorted(ok, key=lambda n: -rows[n]["judge_separability_margin"])[:2]


def sweep(work: Path) -> dict[str, Any]:
    keys = ("label_agreement", "judge_separability_margin", "separability_margin", "outlier_fraction",
            "class_entropy_normalized", "near_duplicate_fraction", "mean_confidence", "seconds")
    rows = {name: {k: _sweep_metrics(work, name)[k] for k in keys} for name in SWEEP}
    return {"stage": "sweep", "count": SWEEP_COUNT, "seed": SWEEP_SEED, "frozen": select_config(rows),
            "configs": SWEEP, "rows": rows}


SYNTHETIC_COUNT, SYNTHETIC_SEED = 5000, 2024  # 5 x |R|; vanilla and Contrastive-DP from the same x_T
# When the sweep freezes nothing, the Contrastive-DP arms run the paper's own setting (HNM, tau 10, lambda
# 1e5, the paper's defaults in core.options) as a reference: the method as prescribed, not a configuration
# the sweep chose. study.json records which one ran ("cdp_config").
CDP_REFERENCE = "paper-hnm"


def cdp_config(work: Path) -> str:
    """The sweep configuration of the Contrastive-DP arms: the first frozen one, else CDP_REFERENCE."""
    frozen = json.loads((work / "frozen.json").read_text())["frozen"]
    return frozen[0] if frozen else CDP_REFERENCE


def synthetic_set(work: Path, name: str) -> Path:
    """The shards folder of the arms' synthetic set ``name`` ("vanilla" or "cdp": :func:`cdp_config`)."""
    if name == "vanilla":
        params, extractor = dict(SWEEP["vanilla"]), None
    else:
        params = dict(SWEEP[cdp_config(work)])
        extractor = (work / "runs" / "R" / "0" / "final") if params.pop("robust_features", False) else None
    sample(work, f"arm-{name}", params, count=SYNTHETIC_COUNT, seed=SYNTHETIC_SEED,
           feature_extractor=extractor)
    return work / "sets" / f"arm-{name}" / "shards"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "mnist5k", help="cache of every stage")
    sub = parser.add_subparsers(dest="stage", required=True)
    p_run = sub.add_parser("run", help="one (arm, seed): TRADES, then evaluation on the test split")
    p_run.add_argument("--arm", required=True, choices=sorted(ARMS))
    p_run.add_argument("--seed", type=int, required=True)
    p_run.add_argument("--no-autoattack", action="store_true")
    p_gate = sub.add_parser("gate1", help="R/2, R, R+O at the same step budget (validation only)")
    p_gate.add_argument("--seed", type=int, required=True)
    p_gate.add_argument("--longer", action="store_true", help="R and R+O at 3x the step budget")
    p_gen = sub.add_parser("generator", help="train the DDPM, the labeller and the judge; gate 2")
    p_gen.add_argument("--sampler-steps", type=int, default=None, help="DDIM steps for gate 2 (default 50)")
    p_gen.add_argument("--schedule", choices=("uniform", "quad"), default=None)
    p_gen.add_argument("--unconditional", action="store_true",
                       help="the unconditional DDPM that failed gate 2 (written to gate2-unconditional.json)")
    sub.add_parser("sweep", help="Contrastive-DP configurations judged by sample metrics; freezes one")
    p_gates = sub.add_parser("gates", help="docs/data/mnist5k-gates.json and the gate-1 figure")
    p_gates.add_argument("--json", type=Path, default=ROOT / "docs" / "data" / "mnist5k-gates.json")
    p_gates.add_argument("--img", type=Path, default=ROOT / "docs" / "img")
    sub.add_parser("sets", help="the arms' synthetic sets: vanilla and Contrastive-DP (cdp_config)")
    p_rep = sub.add_parser("report", help="docs/data/mnist5k-study.json and the figures from cached runs")
    p_rep.add_argument("--json", type=Path, default=ROOT / "docs" / "data" / "mnist5k-study.json")
    p_rep.add_argument("--img", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args(argv)
    _torch_setup()
    from mnist5k_report import gates_report, report  # the report's module imports this one
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage == "run":
        emit(run(args.work, args.arm, args.seed, autoattack=not args.no_autoattack))
    elif args.stage == "gate1":
        emit(gate1(args.work, args.seed, longer=args.longer))
    elif args.stage == "generator":
        result = gate2(args.work, steps=args.sampler_steps, schedule=args.schedule,
                       conditional=not args.unconditional)
        if args.sampler_steps is None and args.schedule is None:  # the gate of record
            name = "gate2-unconditional.json" if args.unconditional else "gate2.json"
            (args.work / name).write_text(json.dumps(result, indent=1))
        emit(result)
    elif args.stage == "gates":
        emit(gates_report(args.work, args.json, args.img))
    elif args.stage == "sets":
        rows = {}
        for name in ("vanilla", "cdp"):
            synthetic_set(args.work, name)
            m = json.loads((args.work / "sets" / f"arm-{name}" / "metrics.json").read_text())
            rows[name] = {k: m[k] for k in ("name", "count", "label_agreement", "outlier_fraction",
                                            "class_entropy_normalized", "near_duplicate_fraction", "seconds")}
        emit({"stage": "sets", "sets": rows})
    elif args.stage == "report":
        emit(report(args.work, args.json, args.img))
    elif args.stage == "sweep":
        result = sweep(args.work)
        (args.work / "frozen.json").write_text(json.dumps(result, indent=1))
        emit(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
