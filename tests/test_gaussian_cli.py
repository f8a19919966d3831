"""``cdp simulate gaussian``: output shapes, figures and bad flags."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from core.cli import main

SMALL = [
    "simulate",
    "gaussian",
    "--trials",
    "4",
    "--real-sizes",
    "10,30",
    "--n-syn",
    "5,20",
    "--c",
    "0.5,1.5",
]


def test_json_output_has_the_documented_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SMALL, "--direction", "robust", "--format", "json", "--seed", "7"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert set(payload) == {"config", "rows"}
    config = payload["config"]
    assert config["direction"] == "robust" and config["trials"] == 4 and config["seed"] == 7
    assert config["c"] == [0.5, 1.5] and config["n_syn"] == [5, 20] and config["real_sizes"] == [10, 30]
    assert config["mu"] == pytest.approx([1.0, 1.0])  # d = 2, |mu|^2 = 2, angle 0
    rows = payload["rows"]
    keys = {"source", "c", "direction", "n_real", "n_syn", "acc_mean", "acc_std", "rob_mean", "rob_std"}
    assert all(set(row) == keys for row in rows)
    real = [r for r in rows if r["source"] == "real"]
    synthetic = [r for r in rows if r["source"] == "synthetic"]
    assert [r["n_real"] for r in real] == [10, 30]
    assert all(r["c"] is None and r["n_syn"] is None for r in real)
    assert sorted((r["c"], r["n_syn"]) for r in synthetic) == [(0.5, 5), (0.5, 20), (1.5, 5), (1.5, 20)]
    assert all(r["direction"] == "robust" and r["n_real"] == 10 for r in synthetic)
    assert all(0.5 <= r["rob_mean"] <= r["acc_mean"] <= 1 for r in rows)


def test_csv_and_table_carry_the_same_rows(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*SMALL, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert main([*SMALL, "--format", "csv"]) == 0
    parsed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(parsed) == len(rows)
    for from_csv, from_json in zip(parsed, rows, strict=True):
        assert float(from_csv["acc_mean"]) == pytest.approx(from_json["acc_mean"])
        assert from_csv["c"] == ("" if from_json["c"] is None else str(from_json["c"]))
    assert main([*SMALL]) == 0
    table = capsys.readouterr().out
    assert "population optimum" in table and "0.9214" in table  # Phi(sqrt(2))
    assert f"{rows[0]['acc_mean']:.4f} ({rows[0]['acc_std']:.4f})" in table


def test_plot_writes_both_figures_for_d2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "figs" / "study.png"
    assert main([*SMALL, "--plot", str(target)]) == 0
    err = capsys.readouterr().err
    prop1 = tmp_path / "figs" / "study_prop1.png"
    for path in (target, prop1):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"figure: {path}" in err


def test_plot_skips_the_proposition1_picture_beyond_d2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "d5.png"
    assert main([*SMALL, "--dim", "5", "--plot", str(target)]) == 0
    assert target.exists() and not (tmp_path / "d5_prop1.png").exists()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--c", "1,x"], ["--c", "'x'"]),
        (["--c", "-1"], ["--c", "'-1'"]),
        (["--n-syn", "10,,20"], ["--n-syn", "'10,,20'"]),
        (["--real-sizes", "0"], ["--real-sizes", "'0'"]),
        (["--dim", "0"], ["--dim", "'0'"]),
        (["--trials", "two"], ["--trials", "'two'"]),
        (["--eps", "-0.1"], ["--eps", "'-0.1'"]),
        (["--sigma", "0"], ["--sigma", "'0'"]),
        (["--mu-norm-sq", "nan"], ["--mu-norm-sq", "'nan'"]),
        (["--angle", "200"], ["--angle", "'200'"]),
        (["--direction", "diagonal"], ["--direction", "'diagonal'"]),
        (["--format", "xml"], ["--format", "'xml'"]),
        (["--plot", "out.txt"], ["--plot", "'out.txt'"]),
        (["--dim", "1", "--angle", "30"], ["angle_deg=30"]),
        (["--dim", "1", "--direction", "orthogonal"], ["orthogonal", "dim >= 2"]),
        (["--bogus"], ["--bogus"]),
    ],
    ids=lambda v: " ".join(v),
)
def test_bad_flags_exit_2_with_a_message_naming_them(
    flags: list[str], named: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["simulate", "gaussian", *flags])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    for text in named:
        assert text in err, err
