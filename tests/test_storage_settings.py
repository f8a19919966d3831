"""Storage settings: unsafe MinIO credentials are refused; store_from_settings builds the right adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import Settings, get_settings
from core.storage import LocalStore, store_from_settings
from core.storage.minio_store import MinioStore


def minio_env(monkeypatch: pytest.MonkeyPatch, access: str, secret: str) -> None:
    monkeypatch.setenv("CDP_STORE_BACKEND", "minio")
    monkeypatch.setenv("CDP_MINIO_ACCESS_KEY", access)
    monkeypatch.setenv("CDP_MINIO_SECRET_KEY", secret)


def test_local_backend_is_the_default(tmp_path: Path) -> None:
    settings = Settings()
    assert settings.store_backend == "local"
    store = store_from_settings(settings.model_copy(update={"store_root": tmp_path / "s"}))
    assert isinstance(store, LocalStore) and store.root == tmp_path / "s"


@pytest.mark.parametrize(
    "access,secret",
    [
        ("minioadmin", "minioadmin"),
        ("minio", "minio123"),
        ("cdp-service", "change-me-long-random-service-secret"),  # the .env.example placeholder
    ],
)
def test_well_known_minio_credentials_are_refused(
    monkeypatch: pytest.MonkeyPatch, access: str, secret: str
) -> None:
    minio_env(monkeypatch, access, secret)
    with pytest.raises(ValidationError, match="well-known credentials") as info:
        get_settings()
    assert "CDP_ALLOW_INSECURE_DEFAULTS" in str(info.value)


def test_well_known_credentials_pass_with_the_explicit_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    minio_env(monkeypatch, "minioadmin", "minioadmin")
    monkeypatch.setenv("CDP_ALLOW_INSECURE_DEFAULTS", "true")
    assert get_settings().minio_access_key == "minioadmin"


@pytest.mark.parametrize("access,secret", [("", "s3cret-long"), ("key", ""), ("", "")])
def test_minio_backend_needs_credentials(monkeypatch: pytest.MonkeyPatch, access: str, secret: str) -> None:
    minio_env(monkeypatch, access, secret)
    with pytest.raises(ValidationError, match="needs credentials") as info:
        get_settings()
    if secret:
        assert secret not in str(info.value)  # errors do not echo the environment's secrets


def test_well_known_credentials_do_not_matter_for_the_local_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDP_MINIO_ACCESS_KEY", "minioadmin")
    monkeypatch.setenv("CDP_MINIO_SECRET_KEY", "minioadmin")
    assert get_settings().store_backend == "local"


def test_secret_key_is_not_shown_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    minio_env(monkeypatch, "svc-user", "a-very-private-secret")
    settings = get_settings()
    assert "a-very-private-secret" not in repr(settings)
    assert settings.minio_secret_key.get_secret_value() == "a-very-private-secret"


def test_store_from_settings_builds_a_minio_store(monkeypatch: pytest.MonkeyPatch) -> None:
    minio_env(monkeypatch, "svc-user", "a-very-private-secret")
    monkeypatch.setenv("CDP_MINIO_ENDPOINT", "minio:9000")
    monkeypatch.setenv("CDP_MINIO_BUCKET", "artifacts")
    monkeypatch.setenv("CDP_MINIO_PUBLIC_ENDPOINT", "https://files.example.org")
    monkeypatch.setenv("CDP_MINIO_PART_SIZE_MIB", "8")
    store = store_from_settings(get_settings())  # no network request
    assert isinstance(store, MinioStore)
    assert (store.endpoint, store.secure, store.bucket) == ("minio:9000", False, "artifacts")
    assert store.public_endpoint == "files.example.org"
    assert store.part_size == 8 * 1024 * 1024
    url = store.presigned_url("jobs/x/preview.png", expires=get_settings().presign_expiry_s)
    assert url is not None and url.startswith("https://files.example.org/artifacts/jobs/x/preview.png?")


def test_empty_public_endpoint_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    minio_env(monkeypatch, "svc-user", "a-very-private-secret")
    monkeypatch.setenv("CDP_MINIO_PUBLIC_ENDPOINT", "")
    store = store_from_settings(get_settings())
    assert isinstance(store, MinioStore) and store.public_endpoint is None


@pytest.mark.parametrize(
    "name,value",
    [("CDP_STORE_BACKEND", "s3"), ("CDP_MINIO_PART_SIZE_MIB", "4"), ("CDP_PRESIGN_EXPIRY_S", "0")],
)
def test_bad_storage_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("CDP_").lower()):
        get_settings()
