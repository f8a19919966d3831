"""benchmarks/_common.py, the parts the benchmarks share: the table, the --shapes selection, the report."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

# loaded from its file, as the benchmarks see it, without putting benchmarks/ on sys.path for other tests
_spec = importlib.util.spec_from_file_location(
    "_common", Path(__file__).resolve().parents[1] / "benchmarks" / "_common.py"
)
assert _spec is not None and _spec.loader is not None
_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_common)

SHAPES = {"digits": {"batch": 64, "steps": 20}, "cifar10": {"batch": 8, "steps": 10}}


def test_a_table_aligns_each_title_like_its_column(capsys: pytest.CaptureFixture[str]) -> None:
    _common.print_table([("shape", "shape", "<8"), ("ms/img", "ms", ">8.2f"), ("n", "n", ">3")],
                [{"shape": "digits", "ms": 1.5, "n": 7}, {"shape": "cifar10", "ms": 12.25, "n": 10}])
    assert capsys.readouterr().out.splitlines() == [
        "shape      ms/img   n",
        "digits       1.50   7",
        "cifar10     12.25  10",
    ]


@pytest.mark.parametrize(
    ("shapes", "batch", "expected"),
    [
        ("digits", None, [("digits", {"batch": 64, "steps": 20})]),
        ("cifar10, digits", 2,
         [("cifar10", {"batch": 2, "steps": 10}), ("digits", {"batch": 2, "steps": 20})]),
    ],
    ids=["defaults", "override-in-order"],
)
def test_shapes_come_in_the_order_named_with_the_options_given(
    shapes: str, batch: int | None, expected: list[tuple[str, dict]]
) -> None:
    args = argparse.Namespace(shapes=shapes, batch=batch, steps=None)
    overrides = {"batch": "batch", "steps": "steps"}
    assert _common.selected_shapes(argparse.ArgumentParser(), args, SHAPES, overrides) == expected
    assert SHAPES["digits"]["batch"] == 64  # the table itself is left alone


@pytest.mark.parametrize("shapes", ["mnist", " , "], ids=["unknown", "none"])
def test_an_unknown_or_empty_shape_list_is_a_usage_error(shapes: str) -> None:
    args = argparse.Namespace(shapes=shapes, batch=None)
    with pytest.raises(SystemExit) as exc:
        _common.selected_shapes(argparse.ArgumentParser(), args, SHAPES, {})
    assert exc.value.code == 2


def test_the_report_names_the_benchmark_then_the_extras_then_the_options_as_strings(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    _common.write_report(out, "demo", argparse.Namespace(seed=0, json=out), [{"x": 1}], batch=4)
    report = json.loads(out.read_text())
    assert list(report) == ["benchmark", "batch", "args", "rows"]
    assert report == {"benchmark": "demo", "batch": 4, "args": {"seed": "0", "json": str(out)},
                      "rows": [{"x": 1}]}
