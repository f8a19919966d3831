"""The attacks of the robustness evaluations, one row each: name -> how it runs -> the metric it reports.

:data:`ATTACK_TABLE` is the one list of them. :mod:`core.training.robustness` runs each row's ``method``
(``"pgd"``: :func:`core.training.pgd.pgd_attack` with the row's ``loss``, batch by batch; ``"autoattack"``:
AutoAttack on the whole set, from the optional extra ``pyautoattack``); its results, the evaluation jobs'
metrics and the experiment reports name each attack's accuracy by the row's ``metric``. The names are
:data:`core.options.AttackName`'s (the API's choices); tests/test_attacks_pgd.py checks that the two agree.

Torch-free (plain data): the experiment report, the job that builds it and the client CLI read the metric
names and labels from here without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.options import AttackName

CLEAN_METRIC = "clean_acc"
WORST_METRIC = "worst_acc"  # per sample: correct on the clean image and under every attack that ran


@dataclass(frozen=True)
class Attack:
    """One attack of the evaluations. ``method`` says how :mod:`core.training.robustness` runs it (with
    ``loss`` for PGD); ``default``: run when no attacks are named (False: only on request, e.g. AutoAttack,
    costly and an optional extra); ``label``: its column heading in reports."""

    name: AttackName
    metric: str
    label: str
    method: Literal["pgd", "autoattack"]
    loss: Literal["ce", "cw"] | None = None
    default: bool = True


ATTACK_TABLE: dict[str, Attack] = {
    attack.name: attack
    for attack in (
        Attack("pgd_ce", metric="pgd_ce_acc", label="PGD-CE", method="pgd", loss="ce"),
        Attack("pgd_cw", metric="pgd_cw_acc", label="PGD-CW", method="pgd", loss="cw"),
        Attack("autoattack", metric="autoattack_acc", label="AutoAttack", method="autoattack", default=False),
    )
}

DEFAULT_ATTACKS: tuple[str, ...] = tuple(name for name, attack in ATTACK_TABLE.items() if attack.default)

# The figures an experiment reports, in their table's order: clean, the default attacks, the worst case,
# then the attacks run only on request.
REPORT_METRICS: tuple[str, ...] = (
    CLEAN_METRIC,
    *(attack.metric for attack in ATTACK_TABLE.values() if attack.default),
    WORST_METRIC,
    *(attack.metric for attack in ATTACK_TABLE.values() if not attack.default),
)

METRIC_LABELS: dict[str, str] = {
    CLEAN_METRIC: "clean",
    **{attack.metric: attack.label for attack in ATTACK_TABLE.values()},
    WORST_METRIC: "worst case",
}


def check_attacks(attacks: tuple[str, ...] | list[str]) -> None:
    """ValueError naming the unknown ones unless every name is a row of :data:`ATTACK_TABLE`."""
    unknown = set(attacks) - set(ATTACK_TABLE)
    if unknown:
        raise ValueError(f"unknown attacks {sorted(unknown)}; choose from {', '.join(ATTACK_TABLE)}")
