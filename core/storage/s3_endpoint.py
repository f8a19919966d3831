"""How the MinIO adapter reaches its server: the endpoint as ``host[:port]`` plus TLS, and the HTTP pool.

:class:`core.storage.minio_store.MinioStore` parses its server endpoint and the public endpoint that presigned
URLs are signed for with :func:`split_endpoint`, and shares one :func:`http_client` pool between its clients.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import certifi
import urllib3


def split_endpoint(endpoint: str, *, secure: bool, name: str = "endpoint") -> tuple[str, bool]:
    """``host[:port]`` plus the TLS flag from an endpoint given as ``host[:port]`` or ``http(s)://host[:port]``.

    A scheme, when present, decides TLS (it overrides ``secure``). Paths are refused: S3 endpoints have none.
    """
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise ValueError(
            f"{name} must be a non-empty 'host[:port]' or 'http(s)://host[:port]', got {endpoint!r}"
        )
    value = endpoint.strip()
    if "://" in value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{name} must use http or https, got {endpoint!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment or not parts.netloc:
            raise ValueError(f"{name} must be 'scheme://host[:port]' without a path, got {endpoint!r}")
        return parts.netloc, parts.scheme == "https"
    if "/" in value or "@" in value:
        raise ValueError(f"{name} must be 'host[:port]' without a path, got {endpoint!r}")
    return value, secure


def http_client(*, connect_timeout: float, read_timeout: float) -> urllib3.PoolManager:
    # The SDK's default pool waits up to 5 minutes to connect; a readiness probe must fail fast instead.
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        maxsize=16,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
