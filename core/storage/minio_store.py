"""MinIO (or any S3-protocol server) as the object store, through the ``minio`` SDK.

- Every SDK call uses keyword arguments.
- Uploads go through ``put_object`` with the exact length and a fixed ``part_size``: objects larger than one
  part are sent as a multipart upload by the SDK.
- The sha256 of each object is computed before the upload and stored as user metadata
  (``x-amz-meta-sha256``); :meth:`MinioStore.stat` returns it.
- Presigned GET URLs are signed by a second client configured with ``public_endpoint`` when one is set: the
  signature covers the Host header, so a URL signed for ``minio:9000`` (the compose-internal name) is useless
  to a client outside the compose network. Presigning needs no request to the server (the region is fixed).
- The endpoint is parsed and the HTTP pool built by :mod:`core.storage.s3_endpoint`.
- ``S3Error``, other SDK errors and urllib3 errors are translated to :class:`StorageError` /
  :class:`ObjectNotFound` here; none escapes this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from core.storage.base import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CONTENT_TYPE,
    BaseStore,
    ObjectInfo,
    ObjectNotFound,
    StorageError,
    as_bytes,
    existing_file,
    guess_content_type,
    sha256_file,
    validate_chunk_size,
    validate_expiry,
    validate_key,
    validate_prefix,
)
from core.storage.s3_endpoint import http_client, split_endpoint

logger = logging.getLogger(__name__)

SHA256_META = "x-amz-meta-sha256"
MIN_PART_SIZE = 5 * 1024 * 1024  # the S3 minimum for all parts but the last
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
DEFAULT_PART_SIZE = 16 * 1024 * 1024
_NOT_FOUND = {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}
_ALREADY_EXISTS = {"PreconditionFailed", "ConditionalRequestConflict"}
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class MinioStore(BaseStore):
    """Objects in one bucket of a MinIO / S3 server.

    ``endpoint`` is where this process reaches the server (``minio:9000`` inside compose);
    ``public_endpoint`` (optional) is where *clients* of the API reach it, used only to sign presigned URLs.
    The bucket is created on first write or ping when ``auto_create_bucket`` (see :meth:`ensure_bucket`).
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str = "us-east-1",
        public_endpoint: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        auto_create_bucket: bool = True,
    ) -> None:
        if not isinstance(part_size, int) or not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(
                f"part_size must be an int in {MIN_PART_SIZE}..{MAX_PART_SIZE} bytes, got {part_size!r}"
            )
        if not bucket or not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
            raise ValueError(f"bucket must be a valid S3 bucket name (3-63 of a-z 0-9 . -), got {bucket!r}")
        if not region:
            raise ValueError(f"region must be a non-empty string, got {region!r}")
        host, tls = split_endpoint(endpoint, secure=secure, name="endpoint")
        self.bucket = bucket
        self.endpoint = host
        self.secure = tls
        self.region = region
        self.part_size = part_size
        self.auto_create_bucket = auto_create_bucket
        self._bucket_ready = False
        http = http_client(connect_timeout=connect_timeout, read_timeout=read_timeout)

        def client(client_host: str, client_tls: bool) -> Minio:
            return Minio(
                endpoint=client_host,
                access_key=access_key,
                secret_key=secret_key,
                secure=client_tls,
                region=region,
                http_client=http,
            )

        self._client = client(host, tls)
        self.public_endpoint: str | None = None
        self._public_client: Minio | None = None
        if public_endpoint:
            public_host, public_tls = split_endpoint(public_endpoint, secure=tls, name="public_endpoint")
            self.public_endpoint = public_host
            # Only used to sign URLs, which happens offline because the region is given.
            self._public_client = client(public_host, public_tls)

    def __repr__(self) -> str:
        scheme = "https" if self.secure else "http"
        return (
            f"MinioStore({scheme}://{self.endpoint}/{self.bucket}, public_endpoint={self.public_endpoint!r})"
        )

    # -- error translation -------------------------------------------------------------------------

    def _raise(self, exc: Exception, action: str, key: str | None) -> NoReturn:
        where = f"{action} {key!r}" if key is not None else action
        if isinstance(exc, S3Error):
            if exc.code in _NOT_FOUND and key is not None:
                raise ObjectNotFound(key) from exc
            if exc.code == "NoSuchBucket":
                raise StorageError(
                    f"{where}: bucket {self.bucket!r} does not exist on {self.endpoint} "
                    "(create it with MinioStore.ensure_bucket() or the compose 'createbuckets' service)"
                ) from exc
            raise StorageError(f"{where} failed: S3 error {exc.code}: {exc.message}") from exc
        if isinstance(exc, urllib3.exceptions.HTTPError):
            raise StorageError(f"{where} failed: cannot talk to {self.endpoint}: {exc}") from exc
        raise StorageError(f"{where} failed: {type(exc).__name__}: {exc}") from exc

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        try:
            yield
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._raise(exc, action, key)

    # -- bucket ------------------------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (safe to call concurrently from many processes)."""
        with self._errors(f"create bucket {self.bucket!r}"):
            if not self._client.bucket_exists(bucket_name=self.bucket):
                try:
                    self._client.make_bucket(bucket_name=self.bucket, location=self.region)
                    logger.info("created bucket %s on %s", self.bucket, self.endpoint)
                except S3Error as exc:
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
        self._bucket_ready = True

    def _before_write(self) -> None:
        if self.auto_create_bucket and not self._bucket_ready:
            self.ensure_bucket()

    def ping(self) -> None:
        """Check the server answers with these credentials and the bucket exists (created when allowed)."""
        if self.auto_create_bucket:
            self.ensure_bucket()
            return
        with self._errors("ping"):
            exists = self._client.bucket_exists(bucket_name=self.bucket)
        if not exists:
            raise StorageError(f"bucket {self.bucket!r} does not exist on {self.endpoint}")

    # -- writes ------------------------------------------------------------------------------------

    def _put_stream(
        self, key: str, stream: io.BufferedIOBase | io.BytesIO, *, length: int, sha256: str, content_type: str
    ) -> ObjectInfo:
        self._before_write()
        with self._errors("upload", key):
            self._client.put_object(
                bucket_name=self.bucket,
                object_name=key,
                data=stream,
                length=length,
                content_type=content_type,
                metadata={SHA256_META: sha256},
                part_size=self.part_size,
            )
        return self.stat(key)

    def put_bytes(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> ObjectInfo:
        validate_key(key)
        payload = as_bytes(data)
        sha256 = hashlib.sha256(payload).hexdigest()
        return self._put_stream(
            key, io.BytesIO(payload), length=len(payload), sha256=sha256, content_type=content_type
        )

    def put_file(self, key: str, path: Path, *, content_type: str | None = None) -> ObjectInfo:
        validate_key(key)
        source = existing_file(path)
        # The hash goes into the upload's headers, so it is computed in a first pass over the file.
        sha256, size = sha256_file(source)
        with open(source, "rb") as fh:
            return self._put_stream(
                key, fh, length=size, sha256=sha256, content_type=content_type or guess_content_type(key)
            )

    def put_bytes_if_absent(self, key: str, data: bytes, *, content_type: str = DEFAULT_CONTENT_TYPE) -> bool:
        """Conditional create with ``If-None-Match: *`` (one PUT; S3 since 2024, MinIO since 2024).

        The SDK has no public way to send that header, so this uses its internal ``_put_object``; older
        servers that ignore the header would overwrite. Objects larger than one part are refused.
        """
        validate_key(key)
        payload = as_bytes(data)
        if len(payload) > self.part_size:
            raise ValueError(
                f"put_bytes_if_absent is for small records: {len(payload)} bytes > part_size {self.part_size}"
            )
        self._before_write()
        headers = {
            "Content-Type": content_type,
            SHA256_META: hashlib.sha256(payload).hexdigest(),
            "If-None-Match": "*",
        }
        try:
            self._client._put_object(bucket_name=self.bucket, object_name=key, data=payload, headers=headers)
        except S3Error as exc:
            if exc.code in _ALREADY_EXISTS:
                return False
            self._raise(exc, "create", key)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            self._raise(exc, "create", key)
        return True

    # -- reads -------------------------------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo:
        validate_key(key)
        with self._errors("stat", key):
            obj = self._client.stat_object(bucket_name=self.bucket, object_name=key)
        sha = (obj.metadata or {}).get(SHA256_META)
        return ObjectInfo(
            key=key,
            size=int(obj.size or 0),
            etag=(obj.etag or "").strip('"'),
            sha256=sha if isinstance(sha, str) and _SHA256_RE.fullmatch(sha) else None,
            last_modified=obj.last_modified,
            content_type=obj.content_type,
        )

    def _open(self, key: str) -> Any:
        with self._errors("download", key):
            return self._client.get_object(bucket_name=self.bucket, object_name=key)

    def get_bytes(self, key: str) -> bytes:
        validate_key(key)
        response = self._open(key)
        try:
            with self._errors("download", key):
                return response.read()
        finally:
            response.close()
            response.release_conn()

    def iter_chunks(self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        validate_key(key)
        validate_chunk_size(chunk_size)
        response = self._open(key)  # errors (missing key) surface here, before the first chunk
        return self._stream(response, key, chunk_size)

    def _stream(self, response: Any, key: str, chunk_size: int) -> Iterator[bytes]:
        try:
            with self._errors("download", key):
                yield from response.stream(amt=chunk_size)
        finally:
            response.close()
            response.release_conn()

    def download_file(self, key: str, path: Path) -> None:
        validate_key(key)
        dest = Path(path)
        with self._errors("download", key):
            # Writes to a temporary '<path>.<etag>.part.minio' and renames it into place.
            self._client.fget_object(bucket_name=self.bucket, object_name=key, file_path=str(dest))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        with self._errors("list", prefix):
            for obj in self._client.list_objects(
                bucket_name=self.bucket, prefix=prefix or None, recursive=True
            ):
                if obj.is_dir or obj.object_name is None:
                    continue
                yield ObjectInfo(
                    key=obj.object_name,
                    size=int(obj.size or 0),
                    etag=(obj.etag or "").strip('"'),
                    sha256=None,  # not in S3 listings; stat() has it
                    last_modified=obj.last_modified,
                    content_type=None,
                )

    # -- the rest ----------------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        validate_key(key)
        with self._errors("delete", key):
            self._client.remove_object(bucket_name=self.bucket, object_name=key)

    def presigned_put_url(self, key: str, *, expires: int) -> str:
        """A PUT URL valid for ``expires`` seconds (a client uploads one object there directly)."""
        validate_key(key)
        validate_expiry(expires)
        self.ensure_bucket()
        client = self._public_client or self._client
        with self._errors("presign", key):
            return client.presigned_put_object(bucket_name=self.bucket, object_name=key,
                                               expires=timedelta(seconds=expires))

    def presigned_url(self, key: str, *, expires: int) -> str | None:
        """A GET URL valid for ``expires`` seconds, signed for ``public_endpoint`` when configured.

        Does not check that the object exists (a GET on the URL then answers 404).
        """
        validate_key(key)
        validate_expiry(expires)
        client = self._public_client or self._client
        with self._errors("presign", key):
            return client.presigned_get_object(
                bucket_name=self.bucket, object_name=key, expires=timedelta(seconds=expires)
            )
