"""docs/operations.md stays in step with the code; `cdp config` shows, checks and documents the settings."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from core.cli import main
from core.cli.config import END_MARKER, START_MARKER, settings_markdown, settings_reference, update_docs
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "operations.md"


def test_settings_table_in_the_doc_matches_the_code() -> None:
    text = DOC.read_text()
    table = text.split(START_MARKER, 1)[1].split(END_MARKER, 1)[0].strip("\n") + "\n"
    assert table == settings_markdown(), (
        "docs/operations.md is out of date: run `.venv/bin/cdp config --update-docs docs/operations.md`"
    )


def test_every_settings_field_is_documented() -> None:
    text = DOC.read_text()
    missing = [f"CDP_{name.upper()}" for name in Settings.model_fields if f"`CDP_{name.upper()}`" not in text]
    assert not missing, f"not in docs/operations.md: {missing}"
    undescribed = [doc.env for doc in settings_reference() if not doc.description]
    assert not undescribed, f"give these fields a comment in core/settings.py: {undescribed}"


def test_doc_names_the_compose_services() -> None:
    text = DOC.read_text()
    for service in ("minio", "createbuckets", "redis", "api", "worker"):
        assert f"**{service}**" in text


def test_update_docs_rewrites_only_the_marked_block(tmp_path: Path) -> None:
    doc = tmp_path / "ops.md"
    doc.write_text(f"before\n{START_MARKER}\nstale table\n{END_MARKER}\nafter\n")
    assert update_docs(doc) is True
    assert doc.read_text() == f"before\n{START_MARKER}\n{settings_markdown()}{END_MARKER}\nafter\n"
    assert update_docs(doc) is False
    doc.write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- settings-table:start -->"):
        update_docs(doc)


def test_cdp_config_masks_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDP_STORE_BACKEND", "minio")
    monkeypatch.setenv("CDP_MINIO_ACCESS_KEY", "svc-user")
    monkeypatch.setenv("CDP_MINIO_SECRET_KEY", "very-private-secret-value")
    monkeypatch.setenv("CDP_API_TOKENS", '{"private-token-value": "team-a"}')
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "very-private-secret-value" not in out and "private-token-value" not in out
    assert "svc-user" in out and "team-a" in out
    lines = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()}
    assert lines["CDP_MINIO_SECRET_KEY"] == "********"
    assert lines["CDP_STORE_BACKEND"] == '"minio"'


def test_cdp_config_reports_invalid_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDP_STORE_BACKEND", "minio")
    monkeypatch.setenv("CDP_MINIO_ACCESS_KEY", "minioadmin")
    monkeypatch.setenv("CDP_MINIO_SECRET_KEY", "minioadmin")
    assert main(["config"]) == 2
    assert "well-known credentials" in capsys.readouterr().err


def test_cdp_config_check_names_what_is_not_ready(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("CDP_REDIS_URL", f"redis://127.0.0.1:{port}/0")
    monkeypatch.setenv("CDP_STORE_ROOT", str(tmp_path / "store"))
    assert main(["config", "--check"]) == 1
    captured = capsys.readouterr()
    assert "storage: ok" in captured.out
    assert f"cdp: not ready: redis (redis://127.0.0.1:{port}/0)" in captured.err


def test_cdp_config_docs_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--docs"]) == 0
    assert capsys.readouterr().out == settings_markdown()
