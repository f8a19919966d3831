"""core.progress: the typed event, its fraction, the epoch-end pair, and the worker's one fraction map."""

from __future__ import annotations

import dataclasses

import pytest

from core.jobs.context import unit_fraction
from core.progress import ProgressEvent, Stage, report, report_epoch


@pytest.mark.parametrize(("current", "total", "fraction"),
                         [(0, 4, 0.0), (1, 4, 0.25), (4, 4, 1.0), (5, 4, 1.0), (0, 0, 0.0)],
                         ids=["start", "quarter", "end", "past-end", "empty"])
def test_fraction_is_current_over_total_clipped(current: int, total: int, fraction: float) -> None:
    assert ProgressEvent(Stage.TRAIN, current, total).fraction == fraction


def test_an_event_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ProgressEvent(Stage.TRAIN, 1, 2).current = 2  # type: ignore[misc]


def test_report_without_a_callable_does_nothing_and_with_one_hands_it_one_event() -> None:
    report(None, Stage.SAMPLING, 1, 2)
    seen: list[ProgressEvent] = []
    report(seen.append, Stage.SAMPLING, 1, 2, message="batch 1/1")
    assert seen == [ProgressEvent(Stage.SAMPLING, 1, 2, message="batch 1/1")]


def test_an_epoch_end_says_checkpoint_first_then_epoch_with_its_metrics() -> None:
    seen: list[ProgressEvent] = []
    report_epoch(seen.append, 2, 3, metrics={"loss": 0.5})
    assert seen == [ProgressEvent(Stage.CHECKPOINT, 2, 3),
                    ProgressEvent(Stage.EPOCH, 2, 3, metrics={"loss": 0.5})]


def test_stage_values_are_the_strings_job_records_show() -> None:
    assert [str(s) for s in (Stage.SAMPLING, Stage.LABELLING, Stage.TRAIN, Stage.EPOCH, Stage.EVALUATE)] == [
        "sampling", "labelling", "train", "epoch", "evaluate"]
    assert Stage.CHECKPOINT != Stage.EPOCH


@pytest.mark.parametrize(("kind", "event", "expected"), [
    ("generate", ProgressEvent(Stage.SAMPLING, 1, 2), 0.475),
    ("generate", ProgressEvent(Stage.LABELLING, 1, 1), 1.0),
    ("train", ProgressEvent(Stage.TRAIN, 5, 10), 0.45),
    ("train", ProgressEvent(Stage.EPOCH, 1, 1), 0.9),
    ("train", ProgressEvent(Stage.EVALUATE, 1, 2), 0.95),
    ("evaluate", ProgressEvent(Stage.EVALUATE, 1, 1), 0.98),
], ids=["sampling", "labelling", "train-step", "last-epoch", "final-eval", "evaluate"])
def test_one_table_maps_a_units_stages_to_its_fraction(kind: str, event: ProgressEvent,
                                                       expected: float) -> None:
    assert unit_fraction(kind, event) == pytest.approx(expected)  # type: ignore[arg-type]


def test_every_job_kind_has_a_unit_spans_entry_and_unknown_kinds_are_refused() -> None:
    from typing import get_args

    from core.jobs.context import UNIT_SPANS
    from core.specs.record import JobKind

    assert set(UNIT_SPANS) == set(get_args(JobKind))
    event = ProgressEvent(Stage.TRAIN, 1, 2)
    with pytest.raises(ValueError, match="unknown job kind 'export'; expected one of generate, train, "
                                         "evaluate, experiment"):
        unit_fraction("export", event)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'experiment' runs no units"):
        unit_fraction("experiment", event)
