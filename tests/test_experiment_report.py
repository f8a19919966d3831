"""core.experiment_report: the statistics over seeds, checked by hand, and the HTML page, opened in a real
headless Chromium through Selenium (skipped only where no chromium/chromedriver binary is installed)."""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from core.experiment_report import render_html, summarize

ARMS = ["real only", "+ vanilla DDIM", "+ Contrastive-DP <v2>"]
# hand-made numbers: arm -> seed -> worst_acc / clean_acc
WORST = {
    "real only": {0: 0.40, 1: 0.44, 2: 0.42},
    "+ vanilla DDIM": {0: 0.43, 1: 0.45, 2: 0.47},
    "+ Contrastive-DP <v2>": {0: 0.46, 2: 0.50, 3: 0.49},  # seed 1 missing, seed 3 has no reference
}
CLEAN = {
    "real only": {0: 0.80, 1: 0.82, 2: 0.81},
    "+ vanilla DDIM": {0: 0.83, 1: 0.84, 2: 0.82},
    "+ Contrastive-DP <v2>": {0: 0.85, 2: 0.86, 3: 0.84},
}


def _history(seed: int, shift: float) -> list[dict]:
    return [
        {"epoch": e, "lr": 0.1, "train_loss": 2.0 / e + 0.01 * seed, "train_ce": 1.5 / e, "train_kl": 0.3 / e,
         "train_clean_acc": 0.5 + 0.08 * e + shift + 0.01 * seed, "val_clean_acc": 0.45 + 0.07 * e + shift,
         "val_pgd_acc": 0.2 + (0.04 - 0.005 * seed) * e + shift}
        for e in range(1, 5)
    ]


def make_runs() -> list[dict]:
    runs = []
    for i, arm in enumerate(ARMS):
        for seed in sorted(WORST[arm], reverse=True):  # given out of order on purpose
            metrics = {"clean_acc": CLEAN[arm][seed], "worst_acc": WORST[arm][seed],
                       "pgd_ce_acc": WORST[arm][seed] + 0.02, "pgd_cw_acc": WORST[arm][seed] + 0.01}
            if arm != "+ vanilla DDIM":
                metrics["autoattack_acc"] = WORST[arm][seed] - 0.01
            runs.append({"arm": arm, "seed": seed, "metrics": metrics,
                         "synthetic_share": None if i == 0 else 0.25 * i + 0.01 * seed,
                         "history": _history(seed, 0.02 * i),
                         "steps": [{"step": k, "loss": 2.5 / (1 + 0.1 * k) + 0.01 * seed}
                                   for k in range(1, 41)]})  # fmt: skip
    return runs


def _t_stats(values: list[float]) -> tuple[float, float, list[float]]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    return mean, std, [mean - half, mean + half]


def test_summary_matches_hand_computation() -> None:
    s = summarize(make_runs(), arms=ARMS, reference="real only")
    assert s["reference"] == "real only" and s["interval"] == "95% Student t"
    assert list(s["arms"]) == ARMS and set(s["paired"]) == set(ARMS[1:])
    assert s["metrics"] == ["clean_acc", "pgd_ce_acc", "pgd_cw_acc", "worst_acc", "autoattack_acc"]

    ref = s["arms"]["real only"]["worst_acc"]
    # literal numbers: mean 0.42, std 0.02, t(0.975, 2) = 4.302652729911275, half = 4.3027 * 0.02 / sqrt(3)
    assert ref["mean"] == pytest.approx(0.42) and ref["std"] == pytest.approx(0.02)
    assert ref["ci95"] == pytest.approx([0.42 - 0.0496827, 0.42 + 0.0496827], abs=1e-6)
    assert ref["n"] == 3 and ref["seeds"] == [0, 1, 2] and ref["values"] == pytest.approx([0.40, 0.44, 0.42])

    for arm in ARMS:
        for name, table in (("worst_acc", WORST), ("clean_acc", CLEAN)):
            got = s["arms"][arm][name]
            seeds = sorted(table[arm])
            mean, std, ci = _t_stats([table[arm][k] for k in seeds])
            assert got["seeds"] == seeds and got["values"] == pytest.approx([table[arm][k] for k in seeds])
            assert got["mean"] == pytest.approx(mean) and got["std"] == pytest.approx(std)
            assert got["ci95"] == pytest.approx(ci)
    assert "autoattack_acc" not in s["arms"]["+ vanilla DDIM"]  # missing metric: skipped, not zero
    assert s["arms"]["real only"]["synthetic_share"] is None
    assert s["arms"]["+ vanilla DDIM"]["synthetic_share"] == pytest.approx(0.25 + 0.01)  # mean of .25,.26,.27

    # paired: only the seeds both arms have (0 and 2 for the Contrastive-DP arm), arm - reference
    p = s["paired"]["+ Contrastive-DP <v2>"]["worst_acc"]
    diffs = [0.46 - 0.40, 0.50 - 0.42]
    mean, std, ci = _t_stats(diffs)
    assert p["seeds"] == [0, 2] and p["values"] == pytest.approx(diffs) and p["n"] == 2
    assert p["mean"] == pytest.approx(0.07) and p["std"] == pytest.approx(std)
    assert p["ci95"] == pytest.approx(ci)
    assert p["method"] == "paired t"
    q = s["paired"]["+ vanilla DDIM"]["clean_acc"]
    assert q["values"] == pytest.approx([0.03, 0.02, 0.01]) and q["ci95"] == pytest.approx(
        _t_stats([0.03, 0.02, 0.01])[2])
    assert "autoattack_acc" not in s["paired"]["+ vanilla DDIM"]


def test_one_seed_has_no_spread() -> None:
    runs = [{"arm": "a", "seed": 3, "metrics": {"worst_acc": 0.5}}, {"arm": "b", "seed": 3,
            "metrics": {"worst_acc": 0.6}}]  # fmt: skip
    s = summarize(runs, arms=["a", "b"], reference="a")
    assert s["arms"]["a"]["worst_acc"] == {"mean": 0.5, "std": None, "ci95": None, "n": 1, "values": [0.5],
                                           "seeds": [3]}  # fmt: skip
    assert s["paired"]["b"]["worst_acc"]["mean"] == pytest.approx(0.1)
    assert s["paired"]["b"]["worst_acc"]["std"] is None and s["paired"]["b"]["worst_acc"]["ci95"] is None
    assert s["metrics"] == ["worst_acc"]


def test_invalid_input_is_rejected() -> None:
    runs = make_runs()
    with pytest.raises(ValueError, match="duplicated run for arm 'real only' and seed 0"):
        summarize([*runs, {"arm": "real only", "seed": 0, "metrics": {}}], arms=ARMS, reference="real only")
    with pytest.raises(ValueError, match="reference='nope' is not one of the arms"):
        summarize(runs, arms=ARMS, reference="nope")
    with pytest.raises(ValueError, match="unknown arm 'other'"):
        summarize([*runs, {"arm": "other", "seed": 0, "metrics": {}}], arms=ARMS, reference="real only")
    with pytest.raises(ValueError, match="finite"):
        nan_run = {"arm": "a", "seed": 0, "metrics": {"worst_acc": float("nan")}}
        summarize([nan_run], arms=["a"], reference="a")


def _preview_png(colour: str) -> bytes:
    fig = Figure(figsize=(1.6, 1.6))
    ax = fig.subplots()
    ax.imshow(np.random.default_rng(0).random((8, 8)), cmap=colour)
    ax.set_axis_off()
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)
    return buf.getvalue()


def make_report() -> dict:
    runs = make_runs()
    return {
        "title": "digits: real vs synthetic <TRADES>",
        "summary": summarize(runs, arms=ARMS, reference="real only"),
        "runs": runs,
        "previews": {"real only": None, "+ vanilla DDIM": _preview_png("viridis"),
                     "+ Contrastive-DP <v2>": _preview_png("magma")},  # fmt: skip
        "samples": {"+ vanilla DDIM": {"job": "a" * 24, "metrics": {"label_agreement": 0.912,
                                                                    "outlier_fraction": 0.02},
                                       "warnings": ["3 % of the images are near-duplicates <of R>"]}},
        "specs": {"experiment": {"dataset": "digits", "seeds": [0, 1, 2, 3], "marker": "spec-value-7f3a",
                                 "trades": {"epochs": 4, "beta": 6.0}},
                  "children": {"train:real only:0": {"kind": "trades", "seed": 0}}},  # fmt: skip
    }


def test_page_is_self_contained_and_escaped() -> None:
    page = render_html(make_report())
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert "&lt;TRADES&gt;" in page and "<TRADES>" not in page
    assert "+ Contrastive-DP &lt;v2&gt;" in page
    assert page.count('src="data:image/png;base64,') == 4  # robust plot, curves, two previews
    assert len(page) < 600_000


def test_each_arm_shows_its_sample_metrics_and_warnings_beside_its_robust_accuracy() -> None:
    page = render_html(make_report())
    table = page[page.index('<table id="arms">'):page.index("</table>", page.index('<table id="arms">'))]
    row = table[table.index('data-arm="+ vanilla DDIM"'):]
    row = row[:row.index("</tr>")]
    assert "45.0" in row and "91.2 %" in row and "2.0 %" in row  # robust acc., judge agreement, outliers
    assert "near-duplicates &lt;of R&gt;" in row
    assert "real data only" in table and "no sample metrics" in table  # real only; a set without metrics
    assert "optimiser steps" in page[page.index('id="curves-note"'):][:300]
    assert 'id="interval-note"' in page and "no interval can be given" not in page


def test_one_seed_says_that_no_interval_can_be_given() -> None:
    runs = [{"arm": "a", "seed": 0, "metrics": {"worst_acc": 0.5}, "history": [{"epoch": 1, "val_acc": 0.4}]},
            {"arm": "b", "seed": 0, "metrics": {"worst_acc": 0.6}, "history": [{"epoch": 1, "val_acc": 0.5}]}]
    summary = summarize(runs, arms=["a", "b"], reference="a")
    page = render_html({"title": "t", "summary": summary, "runs": runs})
    assert "no interval can be given" in page
    assert page.count("1 seed: no interval") == 2  # in the per-arm table, one per arm
    assert "Lines over epochs" in page


def _browser_binaries() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.mark.timeout(60)
def test_page_in_headless_chromium(tmp_path: Path) -> None:
    binaries = _browser_binaries()
    if binaries is None:
        pytest.skip("no chromium/chromedriver binary on PATH (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver  # a dev dependency: missing it is a failure, not a skip
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    chromium, driver_path = binaries
    page = tmp_path / "report.html"
    page.write_text(render_html(make_report()), encoding="utf-8")

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,2400", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(arg)
    # the system chromedriver: Selenium Manager is never asked to download one
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.set_page_load_timeout(20)
        driver.get(page.as_uri())
        assert driver.title == "digits: real vs synthetic <TRADES>"

        rows = driver.find_elements(By.CSS_SELECTOR, "table#results tbody tr")
        assert [r.find_element(By.CSS_SELECTOR, ".arm-name").text for r in rows] == ARMS

        plot = driver.find_element(By.ID, "robust-plot")
        assert plot.get_attribute("alt")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", plot) > 0
        curves = driver.find_element(By.ID, "training-curves")
        assert driver.execute_script("return arguments[0].naturalWidth", curves) > 0

        figures = driver.find_elements(By.CSS_SELECTOR, "section#previews figure")
        assert [f.find_element(By.TAG_NAME, "figcaption").text for f in figures] == ARMS[1:]
        for f in figures:
            img = f.find_element(By.TAG_NAME, "img")
            assert driver.execute_script("return arguments[0].naturalWidth", img) > 0

        srcs = [i.get_attribute("src") for i in driver.find_elements(By.TAG_NAME, "img")]
        assert len(srcs) == 4 and all(s.startswith("data:image/") for s in srcs)
        assert '"marker": "spec-value-7f3a"' in driver.find_element(By.ID, "specs").text

        from tests.browser import artifacts_dir, full_screenshot

        shot = full_screenshot(driver, artifacts_dir("report") / "report-1280.png")
        assert shot.is_file() and shot.stat().st_size > 0
    finally:
        driver.quit()


def test_one_epoch_curves_are_lines_over_steps_not_dots() -> None:
    from core.experiment_report.figures import single_point_keys

    runs = [{"arm": a, "seed": 0, "metrics": {"worst_acc": 0.4},
             "history": [{"epoch": 1, "train_loss": 1.0, "val_pgd_acc": 0.3}],
             "steps": [{"step": k, "loss": 2.0 / k} for k in range(1, 31)]} for a in ("a", "b")]
    assert single_point_keys(runs) == ["train_loss", "val_pgd_acc"]
    page = render_html({"title": "t", "summary": summarize(runs, arms=["a", "b"], reference="a"),
                        "runs": runs})
    note = page[page.index('id="curves-note"'):][:600]
    assert "one epoch" in note and "train_loss, val_pgd_acc" in note
    assert 'id="training-curves"' in page
