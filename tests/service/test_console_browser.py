"""The console and the API docs in a real headless Chromium, against one served stack for the module (a
private Redis, a Celery worker in this process, the API on a loopback port, API keys for two teams).

A screenshot of every page is kept under var/test-artifacts/console/ (CDP_TEST_ARTIFACTS)."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from core.jobs import keys as job_keys
from core.jobs.apikeys import create_key
from core.settings import get_settings
from core.storage import LocalStore
from tests.browser import artifacts_dir, binaries, chrome, full_screenshot
from tests.service.serving import served

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(binaries() is None, reason="no chromium/chromedriver binary on PATH")]

GENERATE = {"dataset": "digits", "model": "unet-t", "classifier": "cnn-t", "count": 32, "steps": 12,
            "schedule": "uniform", "batch_size": 8, "loss": "hnm", "lam": 10.0, "seed": 3}
LONG_TRAIN = {"kind": "diffusion", "dataset": "digits", "epochs": 300, "batch_size": 64, "unet": "tiny"}


@pytest.fixture(scope="module")
def site(redis_server, tiny_models: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    import redis
    from celery.contrib.testing.worker import start_worker

    from api.app import create_app as create_api
    from core.jobs.queue import CONTROL_QUEUE, WORK_QUEUES
    from worker.app import create_app as create_worker

    root = tmp_path_factory.mktemp("console")
    env = {"CDP_REDIS_URL": redis_server.url, "CDP_STORE_BACKEND": "local",
           "CDP_STORE_ROOT": str(root / "store"),
           "CDP_MODEL_DIR": str(root / "models"), "CDP_WORK_DIR": str(root / "work"),
           "CDP_DATA_ROOT": str(root / "data"), "CDP_DEVICE": "cpu", "CDP_SHARD_SIZE": "8",
           "CDP_API_KEYS_FILE": str(root / "keys.json")}
    for name in ("unet-t", "cnn-t"):
        shutil.copytree(tiny_models / name, root / "models" / name)
    found = {team: create_key(root / "keys.json", team=team)[1] for team in ("team-a", "team-b")}
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        get_settings.cache_clear()
        settings = get_settings()
        store = LocalStore(settings.store_root)
        worker_app = create_worker(settings)
        with start_worker(worker_app, pool="solo", concurrency=1, perform_ping_check=False,
                          queues=[*WORK_QUEUES, CONTROL_QUEUE], loglevel="WARNING", shutdown_timeout=60):
            api = create_api(settings, store=store, redis_client=client)
            with served(api) as url:
                yield SimpleNamespace(url=url, keys=found, store=store, repo=api.state.service.repo,
                                      shots=artifacts_dir("console"))
    get_settings.cache_clear()
    client.close()


@contextlib.contextmanager
def browser(**kwargs) -> Iterator:
    driver = chrome(**kwargs)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _api(site, team: str) -> httpx.Client:
    return httpx.Client(base_url=site.url, headers={"Authorization": f"Bearer {site.keys[team]}"}, timeout=30)


def _sign_in(driver, site, team: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(site.url + "/")
    assert driver.current_url.endswith("/ui/login")  # / -> /ui -> sign in
    field = driver.find_element(By.ID, "key")
    assert driver.find_element(By.CSS_SELECTOR, "label[for=key]").text == "API key"
    field.send_keys(site.keys[team])
    field.submit()
    _wait(lambda: driver.current_url.endswith("/ui"))


def _wait(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_job_runs_live_to_done_its_preview_opens_and_a_running_job_cancels(site) -> None:
    from selenium.webdriver.common.by import By

    with _api(site, "team-a") as api:
        with browser() as driver:
            _sign_in(driver, site, "team-a")
            job_id = api.post("/jobs/generate", json=GENERATE).json()["id"]
            driver.refresh()
            link = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, f'a[href="/ui/jobs/{job_id}"]'))
            full_screenshot(driver, site.shots / "jobs-1280.png")
            link[0].click()
            bar = driver.find_element(By.ID, "progress")
            seen = set()

            def done() -> bool:
                with contextlib.suppress(Exception):  # the page reloads itself when the job finishes
                    seen.add(round(float(driver.find_element(By.ID, "progress").get_attribute("value")), 2))
                    return "succeeded" in driver.find_element(By.ID, "status").text
                return False

            assert bar is not None
            _wait(done, what="the job page to show succeeded")
            _wait(lambda: driver.find_elements(By.ID, "preview"), what="the preview after the reload")
            assert float(driver.find_element(By.ID, "progress").get_attribute("value")) == 1.0
            assert len(seen) >= 2, seen  # the bar moved (values read from the live event stream)
            preview = driver.find_element(By.ID, "preview")
            loaded = "return arguments[0].complete && arguments[0].naturalWidth"
            assert driver.execute_script(loaded, preview) > 0
            assert driver.find_elements(By.CSS_SELECTOR, "#artifact-table a[href$='manifest.json']")
            assert driver.find_elements(By.CSS_SELECTOR, "#metric-list dt")
            full_screenshot(driver, site.shots / "job-generate-1280.png")
            driver.set_window_size(390, 844)
            full_screenshot(driver, site.shots / "job-generate-390.png", width=390)
            assert driver.execute_script("return document.documentElement.scrollWidth") <= 390  # no sideways
            driver.set_window_size(1280, 900)

            long_id = api.post("/jobs/train", json=LONG_TRAIN).json()["id"]
            driver.get(f"{site.url}/ui/jobs/{long_id}")
            _wait(lambda: api.get(f"/jobs/{long_id}").json()["status"] == "running", what="the job to run")
            _wait(lambda: "running" in driver.find_element(By.ID, "status").text, what="running on the page")
            full_screenshot(driver, site.shots / "job-running-1280.png")
            driver.find_element(By.ID, "cancel").click()
            _wait(lambda: api.get(f"/jobs/{long_id}").json()["status"] == "canceled", what="the cancel")
            _wait(lambda: "canceled" in driver.find_element(By.ID, "status").text, what="canceled shown")
            _wait(lambda: not driver.find_elements(By.ID, "cancel"), what="the cancel button to go")
            driver.get(site.url + "/ui")
            driver.set_window_size(390, 844)
            full_screenshot(driver, site.shots / "jobs-390.png", width=390)


def test_an_experiment_report_opens_inline_and_team_b_sees_none_of_team_as_jobs(site) -> None:
    from selenium.webdriver.common.by import By

    from core.experiment_report import render_html
    from tests.test_experiment_report import make_report

    # an experiment record with a rendered report and one child (the worker's part of an experiment is
    # tested in test_experiments.py; here: how the console shows one)
    exp = site.repo.create(kind="experiment", owner="team-a", input={"dataset": "digits", "seeds": [0, 1, 2]})
    child = site.repo.create(kind="train", owner="team-a", input={"kind": "trades", "dataset": "digits",
                                                                  "seed": 0}, parent=exp.id)
    site.store.put_bytes(job_keys.job_prefix(exp.id) + "report.html", render_html(make_report()).encode(),
                         content_type="text/html")
    trained = site.repo.create(kind="train", owner="team-a",
                               input={"kind": "classifier", "dataset": "digits"})
    site.store.put_json(job_keys.metrics_key(trained.id), {
        "steps": [{"step": k, "loss": 2.3 / (1 + 0.05 * k)} for k in range(1, 121)],
        "history": [{"epoch": e, "train_loss": 1.5 / e, "val_accuracy": 0.5 + e / 20} for e in (1, 2, 3)],
        "test": {"clean_acc": 0.91, "robust_acc": 0.42}})
    with browser(height=1000) as driver:
        _sign_in(driver, site, "team-a")
        driver.get(f"{site.url}/ui/jobs/{trained.id}")
        assert driver.find_element(By.CSS_SELECTOR, "#train-curve svg").size["width"] > 800
        full_screenshot(driver, site.shots / "job-train-1280.png")
        driver.get(f"{site.url}/ui/jobs/{exp.id}")
        assert driver.find_element(By.CSS_SELECTOR, f'#children a[href="/ui/jobs/{child.id}"]')
        frame = driver.find_element(By.ID, "report-frame")
        full_screenshot(driver, site.shots / "job-experiment-1280.png")
        driver.switch_to.frame(frame)
        assert driver.find_elements(By.CSS_SELECTOR, "table#results tbody tr")
        driver.switch_to.default_content()
        driver.find_element(By.ID, "report-link").click()
        assert driver.title == "digits: real vs synthetic <TRADES>"  # rendered, not downloaded
        plot = driver.find_element(By.ID, "robust-plot")
        assert driver.execute_script("return arguments[0].naturalWidth", plot) > 0
        full_screenshot(driver, site.shots / "report-1280.png")

        a_ids = {j.id for j in site.repo.list(owner="team-a", page_size=200)[0]}
        driver.get(site.url + "/ui")
        driver.set_window_size(1280, 640)
        assert driver.save_screenshot(str(site.shots / "jobs-team-a-1280.png"))  # docs/img/console.png
        driver.find_element(By.CSS_SELECTOR, "form[action='/ui/logout'] button").click()
        _wait(lambda: driver.current_url.endswith("/ui/login"), what="signed out")
        assert driver.get_cookie("cdp_session") is None
        full_screenshot(driver, site.shots / "login-1280.png")
        _sign_in(driver, site, "team-b")
        rows = driver.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job]")
        shown = {r.get_attribute("data-job") for r in rows}
        assert a_ids and not (shown & a_ids)
        assert "team-a" not in driver.page_source
        driver.get(f"{site.url}/ui/jobs/{exp.id}")
        assert "Not found" in driver.title and child.id not in driver.page_source
        driver.get(f"{site.url}/ui/jobs/{exp.id}/report")
        assert "Not found" in driver.title


def test_docs_render_their_operations_with_the_network_blocked(site) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    operations = httpx.get(site.url + "/openapi.json").json()["paths"]
    count = sum(len(item) for item in operations.values())
    with browser(offline_except="127.0.0.1") as driver:
        with pytest.raises(WebDriverException, match="ERR_NAME_NOT_RESOLVED"):  # no host but loopback
            driver.get("https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js")
        driver.get(site.url + "/docs")
        blocks = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, ".opblock"), what="Swagger UI")
        assert len(blocks) == count
        assert "createGenerateJob" in driver.page_source or driver.find_elements(
            By.CSS_SELECTOR, "[id*=createGenerateJob]")
        full_screenshot(driver, site.shots / "docs-1280.png")
        hosts = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => new URL(e.name).hostname)")
        assert hosts and set(hosts) <= {"127.0.0.1"}, hosts
        driver.get(site.url + "/redoc")
        _wait(lambda: driver.find_elements(By.CSS_SELECTOR, "[data-section-id^='operation/']"),
              what="ReDoc operations")
        sections = driver.find_elements(By.CSS_SELECTOR, "[data-section-id^='operation/']")
        assert len(sections) == count
        full_screenshot(driver, site.shots / "redoc-1280.png")
        # every script, style and request from loopback; the one other reference is ReDoc's sidebar logo
        # (an <img> on its vendor's CDN, refused by the page's CSP and removed by ReDoc when it fails)
        entries = driver.execute_script("return performance.getEntriesByType('resource')"
                                        ".map(e => [e.initiatorType, e.name])")
        assert {n.split("/")[2].split(":")[0] for t, n in entries if t != "img"} == {"127.0.0.1"}, entries
        assert {n for t, n in entries if t == "img" and "127.0.0.1" not in n} <= {
            "https://cdn.redoc.ly/redoc/logo-mini.svg"}
