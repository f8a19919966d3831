"""``cdp demo``: the whole product on digits, over HTTP, on one machine.

Starts the embedded stack (``cdp up``), then through the API: trains a small diffusion model and a
classifier on scikit-learn's digits (reused when a finished job with the same spec exists), generates a
contrastive-guided set and a vanilla set from the same seed, then runs one experiment job (the service's
own comparison: TRADES on real data alone and on real data plus each set, each model evaluated with PGD-CE
and PGD-CW, statistics over ``--seeds``), prints the comparison and where the artifacts and the HTML report
are, and stops the stack. The sizes are chosen to finish within about 15 minutes on a 2-core CPU; they show
the pipeline, not the paper's numbers.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from core.cli.experiment import format_result
from core.cli.up import EmbeddedStack
from core.jobs.embedded import free_port
from core.specs import ExperimentSpec, GenerateSpec, TrainSpec

TERMINAL = ("succeeded", "failed", "canceled")


class DemoError(RuntimeError):
    pass


class Demo:
    def __init__(self, http: httpx.Client, bar: tqdm, *, weights: dict[str, float]) -> None:
        self.http, self.bar, self.weights = http, bar, weights
        self.done: dict[str, float] = {}

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(path, json=body)
        if response.status_code != 202:
            raise DemoError(f"POST {path} -> {response.status_code}: {response.text}")
        return response.json()

    def find_finished_train(self, spec: TrainSpec) -> dict[str, Any] | None:
        wanted = spec.model_dump(mode="json")
        token = None
        while True:
            params: dict[str, Any] = {"kind": "train", "status": "succeeded", "page_size": 100}
            if token:
                params["page_token"] = token
            page = self.http.get("/jobs", params=params).json()
            for job in page["items"]:
                if job["input"] == wanted:
                    return job
            token = page.get("next_page_token")
            if not token:
                return None

    def train(self, label: str, body: dict[str, Any], *, reuse: bool) -> dict[str, Any]:
        spec = TrainSpec.model_validate(body)
        if reuse and (job := self.find_finished_train(spec)) is not None:
            tqdm.write(f"reusing {label}: job {job['id']}", file=sys.stderr)
            self._advance(label, 1.0)
            return job
        return self._post("/jobs/train", spec.model_dump(mode="json"))

    def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._post("/jobs/generate", GenerateSpec.model_validate(body).model_dump(mode="json"))

    def _advance(self, label: str, fraction: float) -> None:
        self.done[label] = fraction
        total = sum(self.weights[k] * v for k, v in self.done.items())
        self.bar.n = round(100 * total / sum(self.weights.values()), 1)
        self.bar.refresh()

    def wait(self, jobs: dict[str, dict[str, Any]], stack: EmbeddedStack) -> dict[str, dict[str, Any]]:
        pending = {label: job for label, job in jobs.items() if job["status"] not in TERMINAL}
        final = {label: job for label, job in jobs.items() if job["status"] in TERMINAL}
        while pending:
            stack.check_alive()
            for label, job in list(pending.items()):
                job = self.http.get(f"/jobs/{job['id']}").json()
                self._advance(label, job["progress"]["fraction"])
                if job["status"] in TERMINAL:
                    final[label] = pending.pop(label)
                    final[label] = job
                    if job["status"] != "succeeded":
                        raise DemoError(f"{label} job {job['id']} {job['status']}: {job['error']}")
                else:
                    self.bar.set_description(f"{label}: {job['progress']['stage'] or job['status']}")
            time.sleep(0.5)
        return final

    def experiment(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._post("/jobs/experiment", ExperimentSpec.model_validate(body).model_dump(mode="json"))

    def metrics(self, job: dict[str, Any]) -> dict[str, Any]:
        return self.http.get(f"/jobs/{job['id']}/metrics").json()["metrics"]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _table(title: str, columns: list[str], rows: list[tuple[str, list[Any]]]) -> str:
    width = max(len(r[0]) for r in rows) + 2
    lines = [title, " " * width + "".join(f"{c:>16}" for c in columns)]
    lines += [f"{name:<{width}}" + "".join(f"{_fmt(v):>16}" for v in values) for name, values in rows]
    return "\n".join(lines)


def _separability(metrics: dict[str, Any]) -> Any:
    for key in ("separability_margin", "separability"):
        if key in metrics:
            return metrics[key]
    return None


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    # rough seconds per job on a 2-core CPU, measured once; they only apportion the progress bar
    sampling = args.count * args.steps / 25
    trades_s = 15.0 * args.trades_epochs
    seeds = [int(s) for s in str(args.seeds).split(",")]
    weights = {"diffusion": 17.5 * args.diffusion_epochs, "classifier": 6.0 * args.classifier_epochs,
               "contrastive": 0.15 * sampling, "vanilla": 0.1 * sampling,
               "experiment": 3 * trades_s * len(seeds)}
    logging.getLogger("httpx").setLevel(logging.WARNING)
    stack = EmbeddedStack(var=Path(args.var), port=args.port or free_port(), redis_url=args.redis_url,
                          worker_threads=args.worker_threads)
    print(f"starting the embedded stack (files under {stack.var}) ...", file=sys.stderr)
    with stack, httpx.Client(base_url=stack.base_url, timeout=60) as http, \
            tqdm(total=100, unit="%", file=sys.stderr, bar_format="{l_bar}{bar}| {n:.0f}/100% "
                 "[{elapsed}<{remaining}]") as bar:
        demo = Demo(http, bar, weights=weights)
        models = {
            "diffusion": demo.train("diffusion", {"kind": "diffusion", "dataset": "digits",
                                                  "epochs": args.diffusion_epochs, "batch_size": 64,
                                                  "seed": args.seed}, reuse=not args.fresh),
            "classifier": demo.train("classifier", {"kind": "classifier", "dataset": "digits",
                                                    "epochs": args.classifier_epochs, "batch_size": 64,
                                                    "eval_samples": 200, "seed": args.seed},
                                     reuse=not args.fresh),
        }
        models = demo.wait(models, stack)
        common = {"dataset": "digits", "model": f"job:{models['diffusion']['id']}",
                  "classifier": f"job:{models['classifier']['id']}", "count": args.count, "steps": args.steps,
                  "schedule": "uniform", "batch_size": min(args.count, 256), "seed": args.seed}
        generated = demo.wait({
            "contrastive": demo.generate({**common, "loss": "hnm", "lam": args.lam, "tau": args.tau}),
            "vanilla": demo.generate({**common, "loss": "none"}),
        }, stack)
        experiment = demo.wait({"experiment": demo.experiment({
            "dataset": "digits", "seeds": seeds, "reference": "real only",
            "arms": [{"name": "real only"},
                     {"name": "+ contrastive", "synthetic": [f"job:{generated['contrastive']['id']}"],
                      "synthetic_fraction": 0.5},
                     {"name": "+ vanilla", "synthetic": [f"job:{generated['vanilla']['id']}"],
                      "synthetic_fraction": 0.5}],
            "trades": {"epochs": args.trades_epochs, "batch_size": 128, "eps": args.eps,
                       "step_size": args.eps / 4},
            "evaluation": {"eps": args.eps, "attacks": ["pgd_ce", "pgd_cw"], "steps": 10, "limit": 200},
        })}, stack)["experiment"]
        bar.set_description("done")
        gen_metrics = {k: demo.metrics(v) for k, v in generated.items()}
        result = demo.metrics(experiment)

    cols = ["contrastive", "vanilla"]
    print(_table("Generated sets (pseudo-labelled by the classifier)", cols, [
        ("images", [gen_metrics[c].get("generated") for c in cols]),
        ("mean confidence", [gen_metrics[c].get("mean_confidence_all") for c in cols]),
        ("mean entropy", [gen_metrics[c].get("mean_entropy_all") for c in cols]),
        ("separability", [_separability(gen_metrics[c]) for c in cols]),
        ("images / s", [gen_metrics[c].get("images_per_s") for c in cols]),
        ("outliers", [gen_metrics[c].get("outlier_fraction") for c in cols]),
    ]))
    for c in cols:  # a set that is not usable training data says so (core.quality.sample_warnings)
        for warning in gen_metrics[c].get("warnings") or []:
            print(f"warning ({c} set): {warning}")
    print()
    print(f"TRADES, {args.trades_epochs} epochs, test split (eps = {args.eps:.3f}), seeds {seeds}: "
          f"experiment job {experiment['id']}")
    print(format_result(result))
    print("\nArtifacts (local store):")
    for label, job in {**models, **generated, "experiment": experiment}.items():
        print(f"  {label:<20} {stack.var / 'store' / 'jobs' / job['id']}")
    print(f"  {'report':<20} {stack.var / 'store' / 'jobs' / experiment['id'] / 'report.html'}")
    print(f"\ndemo finished in {(time.monotonic() - started) / 60:.1f} min", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="train, generate and adversarially train on digits over HTTP",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--var", default="var", help="directory for the store, models and logs")
    parser.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    parser.add_argument("--redis-url", default=None, help="use this Redis (default: a private one)")
    parser.add_argument("--worker-threads", type=int, default=None,
                        help="torch threads of the worker (default: OMP_NUM_THREADS, else 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--diffusion-epochs", type=int, default=40)
    parser.add_argument("--classifier-epochs", type=int, default=8)
    parser.add_argument("--count", type=int, default=512, help="images per generated set")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--lam", type=float, default=2000.0, help="contrastive guidance strength")
    parser.add_argument("--tau", type=float, default=0.5, help="contrastive temperature")
    parser.add_argument("--trades-epochs", type=int, default=3)
    parser.add_argument("--seeds", default="0", help="comma-separated TRADES seeds of the experiment")
    parser.add_argument("--eps", type=float, default=0.1, help="L_inf radius for TRADES and its evaluation")
    parser.add_argument("--fresh", action="store_true", help="retrain the models even if finished jobs exist")
    parser.set_defaults(func=run)
