"""PGD (core.training.pgd.pgd_attack), the CW margin, the attack table and evaluate_robustness."""

from __future__ import annotations

import sys

import pytest
import torch
from adversarial_helpers import digits_tensors, tiny_cnn, train_ce
from torch import nn

from core.data import load_dataset
from core.training.pgd import cw_margin, pgd_attack
from core.training.robustness import evaluate_robustness, run_autoattack

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    x, y = digits_tensors("train")
    model = train_ce(tiny_cnn(0), x, y, epochs=8, seed=0)
    x_test, y_test = digits_tensors("test")
    return model, x_test[:200], y_test[:200]


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_cw_margin_on_hand_values() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [0.5, -1.0, 4.0]])
    labels = torch.tensor([0, 1, 2])
    # max over the other classes minus the true logit: 3-1, 2-3, 0.5-4
    assert torch.allclose(cw_margin(logits, labels), torch.tensor([2.0, -1.0, -3.5]))


@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("random_start", [True, False], ids=["random-start", "no-start"])
def test_pgd_stays_in_ball_and_box(trained, loss: str, random_start: bool) -> None:
    model, x, y = trained
    eps = 0.1
    x_adv = pgd_attack(
        model, x, y, eps=eps, step_size=0.05, steps=5, loss=loss, random_start=random_start,
        generator=torch.Generator().manual_seed(0),
    )
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert (x_adv != x).any()


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_pgd_lowers_accuracy_of_trained_model(trained, loss: str) -> None:
    model, x, y = trained
    clean = _acc(model, x, y)
    x_adv = pgd_attack(model, x, y, eps=0.1, step_size=0.0125, steps=20, loss=loss,
                       generator=torch.Generator().manual_seed(0))
    assert clean > 0.85
    assert _acc(model, x_adv, y) < clean - 0.2


def test_restarts_keep_the_worst_case_per_sample(trained) -> None:
    """Restarts draw their random starts one after the other from the generator, so k restarts must fool
    exactly the union of what k single-restart runs fool with the same draws, and never fewer than one run."""
    model, x, y = trained
    kwargs = dict(eps=0.08, step_size=0.02, steps=3)
    generator = torch.Generator().manual_seed(5)
    single_runs = [pgd_attack(model, x, y, generator=generator, **kwargs) for _ in range(4)]
    with torch.no_grad():
        fooled_single = torch.stack([model(xa).argmax(1) != y for xa in single_runs])
        x_multi = pgd_attack(model, x, y, restarts=4, generator=torch.Generator().manual_seed(5), **kwargs)
        fooled_multi = model(x_multi).argmax(1) != y
    assert torch.equal(fooled_multi, fooled_single.any(0))
    assert fooled_multi.sum() >= fooled_single[0].sum()
    assert fooled_single.any(0).sum() > fooled_single[0].sum()  # the restarts did find more
    assert (x_multi - x).abs().max().item() <= 0.08 + 1e-6


def test_pgd_is_deterministic_given_the_generator(trained) -> None:
    model, x, y = trained
    runs = [
        pgd_attack(model, x, y, eps=0.1, step_size=0.02, steps=3, generator=torch.Generator().manual_seed(3))
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


def test_pgd_restores_train_mode_and_leaves_parameters_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 10)
    )
    model.train()
    model[1].eval()  # a mixed state must come back as it was
    x, y = torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,))
    bn_mean = model[1].running_mean.clone()
    pgd_attack(model, x, y, eps=0.1, step_size=0.05, steps=2)
    assert model.training and model[0].training and not model[1].training
    assert torch.equal(model[1].running_mean, bn_mean)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        (dict(eps=-0.1, step_size=0.01, steps=3), "eps"),
        (dict(eps=0.1, step_size=0.0, steps=3), "step_size"),
        (dict(eps=0.1, step_size=0.01, steps=-1), "steps"),
        (dict(eps=0.1, step_size=0.01, steps=3, restarts=0), "restarts"),
        (dict(eps=0.1, step_size=0.01, steps=3, loss="l2"), "loss"),
        (dict(eps=0.1, step_size=0.01, steps=3, restarts=2, random_start=False), "random_start"),
    ],
    ids=["eps", "step-size", "steps", "restarts", "loss", "restarts-without-random-start"],
)
def test_pgd_rejects_bad_arguments(kwargs: dict, word: str) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match=word):
        pgd_attack(model, torch.rand(2, 1, 2, 2), torch.tensor([0, 1]), **kwargs)


def test_evaluate_robustness_reports_the_worst_case(trained) -> None:
    model, x, y = trained
    result = evaluate_robustness(model, x, y, eps=0.1, steps=10, batch_size=64, seed=0)
    assert result["count"] == x.shape[0]
    assert result["robust_acc"] <= min(result["pgd_ce_acc"], result["pgd_cw_acc"], result["clean_acc"])
    assert result["pgd_ce_acc"] < result["clean_acc"]
    assert result["clean_acc"] == pytest.approx(_acc(model, x, y))
    assert result["warnings"] == []
    again = evaluate_robustness(model, x, y, eps=0.1, steps=10, batch_size=64, seed=0)
    assert again == result


def test_evaluate_robustness_takes_a_dataset(trained) -> None:
    model, _, _ = trained
    data = load_dataset("digits", "val")
    result = evaluate_robustness(model, data, eps=0.0, steps=1, sanity_checks=False)
    x, y = data.to_tensors("cpu")
    assert result["count"] == len(data)
    assert result["clean_acc"] == pytest.approx(_acc(model, x, y))
    assert result["pgd_ce_acc"] == result["clean_acc"]  # eps = 0: nothing to attack


def test_evaluate_robustness_rejects_images_outside_unit_range(trained) -> None:
    model, x, y = trained
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate_robustness(model, x * 255, y, eps=0.1)


def test_autoattack_missing_package_has_a_clear_message(monkeypatch: pytest.MonkeyPatch, trained) -> None:
    model, x, y = trained
    monkeypatch.setitem(sys.modules, "pyautoattack", None)  # makes `import pyautoattack` fail
    with pytest.raises(ImportError, match="pip install"):
        run_autoattack(model, x[:4], y[:4], eps=0.1)


def test_autoattack_standard_runs_and_is_at_least_as_strong_as_clean(trained) -> None:
    pytest.importorskip("pyautoattack")
    model, x, y = trained
    x, y = x[:16], y[:16]
    # eps = 0.2 breaks this standard-trained net completely (measured), so APGD-CE ends the run early
    result = evaluate_robustness(model, x, y, eps=0.2, steps=10, autoattack=True, sanity_checks=False)
    assert result["autoattack_acc"] < result["clean_acc"]
    assert result["robust_acc"] <= result["autoattack_acc"]


# ------------------------------------------------------------------------------------------ the attack table


def test_the_attack_table_has_one_row_per_attack_name_of_the_api() -> None:
    from core import options
    from core.training.attacks import ATTACK_TABLE

    assert tuple(ATTACK_TABLE) == options.ATTACKS  # a name added to the Literal needs a row here
    assert all(name == attack.name for name, attack in ATTACK_TABLE.items())
    assert len({attack.metric for attack in ATTACK_TABLE.values()}) == len(ATTACK_TABLE)


def test_every_method_of_the_table_has_a_runner() -> None:
    from core.training.attacks import ATTACK_TABLE
    from core.training.robustness import _METHODS

    assert {attack.method for attack in ATTACK_TABLE.values()} <= set(_METHODS)
    assert all(attack.loss is not None for attack in ATTACK_TABLE.values() if attack.method == "pgd")


def test_the_report_metrics_come_from_the_table() -> None:
    from core.cli.experiment import COLUMNS
    from core.experiment_report import DEFAULT_METRICS, METRIC_LABELS
    from core.jobs.experiment import REPORT_METRICS
    from core.training.attacks import ATTACK_TABLE

    assert REPORT_METRICS == DEFAULT_METRICS == (
        "clean_acc", "pgd_ce_acc", "pgd_cw_acc", "worst_acc", "autoattack_acc")  # fmt: skip
    assert set(REPORT_METRICS) == {"clean_acc", "worst_acc", *(a.metric for a in ATTACK_TABLE.values())}
    assert set(METRIC_LABELS) == set(REPORT_METRICS) == {key for key, _ in COLUMNS}


def test_the_api_and_the_specs_know_every_attack_of_the_table() -> None:
    from annotated_types import MaxLen

    from api.routes.jobs import EvaluationMetrics
    from core.specs.train import EvaluationSettings
    from core.training.attacks import ATTACK_TABLE, DEFAULT_ATTACKS

    assert {a.metric for a in ATTACK_TABLE.values()} <= set(EvaluationMetrics.model_fields)
    assert EvaluationSettings().attacks == list(DEFAULT_ATTACKS)
    metadata = EvaluationSettings.model_fields["attacks"].metadata
    limits = [m.max_length for m in metadata if isinstance(m, MaxLen)]
    assert limits == [len(ATTACK_TABLE)]


def test_evaluate_robustness_reports_each_attack_of_the_table_under_its_metric(trained) -> None:
    from core.training.attacks import ATTACK_TABLE, DEFAULT_ATTACKS

    model, x, y = trained
    result = evaluate_robustness(model, x[:16], y[:16], eps=0.05, steps=2, sanity_checks=False)
    assert {ATTACK_TABLE[name].metric for name in DEFAULT_ATTACKS} <= set(result)
    assert not {a.metric for a in ATTACK_TABLE.values() if not a.default} & set(result)
    from core.training.robustness import per_sample_robustness

    with pytest.raises(ValueError, match="unknown attacks"):
        per_sample_robustness(model, x[:4], y[:4], eps=0.05, attacks=("pgd_l2",))
