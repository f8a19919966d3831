"""The web console (/ui) and the offline API docs over HTTP, without a browser: sessions and their cookie
flags, CSRF on cancel, one team never seeing another's jobs, the report inline under its CSP, filters and
paging. The browser tests are in test_console_browser.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from core.jobs import keys as job_keys
from core.jobs.apikeys import create_key
from core.settings import get_settings
from core.storage import LocalStore


@pytest.fixture
def two_teams(service_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              redis_client: redis.Redis) -> Iterator[tuple[TestClient, dict[str, str]]]:
    from api.app import create_app

    path = tmp_path / "keys.json"
    found = {team: create_key(path, team=team)[1] for team in ("team-a", "team-b")}
    monkeypatch.setenv("CDP_API_KEYS_FILE", str(path))
    get_settings.cache_clear()
    settings = get_settings()
    app = create_app(settings, store=LocalStore(settings.store_root), redis_client=redis_client)
    with TestClient(app, base_url="http://testserver") as client:
        yield client, found


def _sign_in(client: TestClient, key: str) -> None:
    client.cookies.clear()
    r = client.post("/ui/login", data={"key": key}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui"


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "no CSRF field on the page"
    return match.group(1)


def test_root_redirects_and_sign_in_sets_a_strict_cookie(two_teams) -> None:
    client, found = two_teams
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui"
    r = client.get("/ui", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"  # not a 401 for a browser
    assert client.get("/jobs").status_code == 401  # the JSON API still wants a key

    bad = client.post("/ui/login", data={"key": "cdp_nope_" + "x" * 40}, follow_redirects=False)
    assert bad.status_code == 401 and "not valid" in bad.text and "set-cookie" not in bad.headers
    r = client.post("/ui/login", data={"key": found["team-a"]}, follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert "cdp_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain HTTP here; over TLS the cookie is Secure
    assert found["team-a"] not in cookie  # the cookie holds a signed digest, never the key
    page = client.get("/ui")
    assert page.status_code == 200 and "team <b>team-a</b>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/jobs").status_code == 200  # the session reads the API (GET) for the page's script
    assert client.post("/jobs/train", json={"kind": "classifier", "dataset": "digits"}).status_code == 401

    assert client.post("/ui/logout", data={"csrf": "guess"}).status_code == 403  # a forged sign-out
    with TestClient(client.app, base_url="https://testserver") as tls:
        r = tls.post("/ui/login", data={"key": found["team-a"]}, follow_redirects=False)
        assert "Secure" in r.headers["set-cookie"]

    forged = client.cookies.get("cdp_session")[:-4] + "AAAA"
    client.cookies.clear()
    client.cookies.set("cdp_session", forged)
    assert client.get("/ui", follow_redirects=False).status_code == 303


def test_a_team_never_sees_another_teams_jobs(two_teams) -> None:
    client, found = two_teams
    repo = client.app.state.service.repo
    a_job = repo.create(kind="train", owner="team-a", input={"kind": "classifier", "dataset": "digits"})
    b_job = repo.create(kind="train", owner="team-b", input={"kind": "classifier", "dataset": "digits"})
    _sign_in(client, found["team-b"])
    page = client.get("/ui").text
    assert b_job.id in page and a_job.id not in page
    assert client.get(f"/ui/jobs/{a_job.id}").status_code == 404
    assert client.get(f"/jobs/{a_job.id}/events").status_code == 404
    token = _csrf(client.get(f"/ui/jobs/{b_job.id}").text)
    r = client.post(f"/ui/jobs/{a_job.id}/cancel", data={"csrf": token}, follow_redirects=False)
    assert r.status_code == 404 and not repo.get(a_job.id).cancel_requested


def test_cancel_needs_the_sessions_csrf_token(two_teams) -> None:
    client, found = two_teams
    repo = client.app.state.service.repo
    job = repo.create(kind="train", owner="team-a", input={"kind": "classifier", "dataset": "digits"})
    _sign_in(client, found["team-a"])
    page = client.get(f"/ui/jobs/{job.id}").text
    assert 'id="cancel-form"' in page
    assert client.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": "guess"}).status_code == 403
    assert client.post(f"/ui/jobs/{job.id}/cancel").status_code == 403
    assert not repo.get(job.id).cancel_requested
    r = client.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": _csrf(page)}, follow_redirects=False)
    assert r.status_code == 303 and repo.get(job.id).cancel_requested


def test_filters_paging_and_bad_filters(two_teams) -> None:
    client, found = two_teams
    repo = client.app.state.service.repo
    ids = [repo.create(kind="generate" if i % 2 else "train", owner="team-a", input={"dataset": "digits"}).id
           for i in range(30)]
    _sign_in(client, found["team-a"])
    page = client.get("/ui").text
    shown = re.findall(r'data-job="([0-9a-f]{24})"', page)
    assert shown == ids[::-1][:25]  # newest first, 25 a page
    nxt = re.search(r'id="next-page" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    assert re.findall(r'data-job="([0-9a-f]{24})"', client.get(nxt).text) == ids[::-1][25:]
    gen = re.findall(r'data-job="([0-9a-f]{24})"', client.get("/ui?kind=generate").text)
    assert gen == [i for i in ids[::-1] if ids.index(i) % 2][:25]
    r = client.get("/ui?kind=bogus&parent=zz")
    assert r.status_code == 422 and 'data-field="kind"' in r.text and 'data-field="parent"' in r.text


def test_report_is_served_inline_under_a_strict_csp(two_teams) -> None:
    client, found = two_teams
    repo, store = client.app.state.service.repo, client.app.state.store
    job = repo.create(kind="experiment", owner="team-a", input={"dataset": "digits"})
    child = repo.create(kind="train", owner="team-a", input={"kind": "trades", "seed": 0}, parent=job.id)
    store.put_bytes(job_keys.job_prefix(job.id) + "report.html", b"<!DOCTYPE html><p>the report</p>",
                    content_type="text/html")
    _sign_in(client, found["team-a"])
    r = client.get(f"/ui/jobs/{job.id}/report")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "attachment" not in r.headers.get("content-disposition", "")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp and "script-src" not in csp
    assert r.text == "<!DOCTYPE html><p>the report</p>"
    page = client.get(f"/ui/jobs/{job.id}").text
    assert f'href="/ui/jobs/{child.id}"' in page and 'id="report-frame"' in page
    _sign_in(client, found["team-b"])
    assert client.get(f"/ui/jobs/{job.id}/report").status_code == 404


def test_without_keys_the_console_is_the_local_team(client: TestClient) -> None:
    job = client.app.state.service.repo.create(kind="train", owner="anonymous", input={"dataset": "digits"})
    page = client.get("/ui")
    assert page.status_code == 200 and job.id in page.text and "team <b>anonymous</b>" in page.text
    token = _csrf(client.get(f"/ui/jobs/{job.id}").text)
    assert client.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": "x"}).status_code == 403
    r = client.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": token}, follow_redirects=False)
    assert r.status_code == 303


def test_docs_load_only_local_assets(client: TestClient) -> None:
    for path, asset in (("/docs", "/static/docs/swagger-ui-bundle.js"),
                        ("/redoc", "/static/docs/redoc.standalone.js")):
        page = client.get(path).text
        assert asset in page and "cdn." not in page and "fonts.googleapis" not in page
        assert client.get(asset).status_code == 200
    assert client.get("/static/console/console.css").status_code == 200


def test_a_training_jobs_page_draws_its_step_curve_and_epochs(two_teams) -> None:
    client, found = two_teams
    repo, store = client.app.state.service.repo, client.app.state.store
    job = repo.create(kind="train", owner="team-a", input={"kind": "classifier", "dataset": "digits"})
    store.put_json(job_keys.metrics_key(job.id), {
        "steps": [{"step": k, "loss": 2.0 / k} for k in range(1, 41)],
        "history": [{"epoch": e, "val_accuracy": 0.5 + e / 10} for e in (1, 2)],
        "test": {"clean_acc": 0.91}, "warnings": ["the <judge> disagrees"]})
    _sign_in(client, found["team-a"])
    page = client.get(f"/ui/jobs/{job.id}").text
    svg = page[page.index("<svg"):page.index("</svg>")]
    vertices = re.search(r'points="([^"]+)"', svg).group(1).split()
    assert len(vertices) == 40 and "step 40" in svg and 'role="img"' in svg  # one vertex per step
    assert 'id="history"' in page and "0.7" in page  # epoch 2's val_accuracy
    assert "test.clean_acc" in page and "the &lt;judge&gt; disagrees" in page
