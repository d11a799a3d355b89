"""The S3 client side: settings, and whole-object reads and writes with bounded, counted retries.

Object stores fail in passing: `503 SlowDown` under load, a connection reset, a slow answer. The job's own
transfers (read tasks' GETs, the sink's PUTs) go through boto3, whose standard retry mode backs off and retries
throttling, 5xx and connection errors up to `max_attempts` attempts in all, and which says how many attempts
it took: those counts travel with the rows to the driver and into the run's log and `runs` row. Everything
else (listing, commit, the `runs` table) goes through pyarrow's `S3FileSystem`, bounded the same way
(`camray.io.sources.filesystem_for`) but without counts, which pyarrow does not expose.

A store that still fails after the last attempt raises `StoreUnavailableError`, which names the operation, the
object and the endpoint; a missing or forbidden object raises `FileNotFoundError` / `PermissionError`, which
are the image's own errors.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from camray.errors import SetupError

logger = logging.getLogger(__name__)

# 6 attempts in all. Where one request in eight fails (the flaky-store test's rates), a request then fails for
# good once in 335,000; AWS's default of 3 would fail one in 580, a few per thousand-image run. boto3's
# standard backoff (random, doubling, capped at 20 s) starts at 1 s for throttling (`SlowDown`) and at 50 ms for
# other errors: a throttling store is waited on for up to 31 s an operation, a dead one given up on in under
# 2 s of backoff plus the connect timeouts. pyarrow's operations back off 25 ms doubling (the SDK's legacy
# strategy, `camray.io.sources.filesystem_for`): 1.6 s measured on a refused port.
DEFAULT_MAX_ATTEMPTS = 6
# A connection to a live store opens in milliseconds; 10 s allows a congested network, not a black hole.
DEFAULT_CONNECT_TIMEOUT_S = 10.0
# Seconds without a byte on an open connection; S3 answers large GETs within this, even when busy.
DEFAULT_READ_TIMEOUT_S = 60.0

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}
_FORBIDDEN = {"AccessDenied", "AllAccessDisabled", "403"}


@dataclass(frozen=True)
class S3Settings:
    """Plain data (workers rebuild it from a dict): where the store is and how long to keep trying it."""

    endpoint_url: str | None = None
    region: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout: float = DEFAULT_READ_TIMEOUT_S

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"`max_attempts` must be an int >= 1, got {self.max_attempts!r}")

    def resolved_endpoint(self) -> str | None:
        if self.endpoint_url:
            return refuse_credentials_in_endpoint(self.endpoint_url, "`storage.s3_endpoint_url`")
        for variable in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
            if os.environ.get(variable):
                return refuse_credentials_in_endpoint(os.environ[variable], f"the {variable} environment variable")
        return None

    def resolved_region(self) -> str | None:
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        # S3-compatible stores ignore the region; naming one avoids a lookup against AWS.
        return region or ("us-east-1" if self.resolved_endpoint() else None)


def refuse_credentials_in_endpoint(url: str, origin: str) -> str:
    """Returns `url` unless it holds `user:password@`: an endpoint is logged and stored with each run's config,
    where a password must never go. The message names neither the user nor the password."""
    parsed = urlparse(url if "://" in url else f"https://{url}")
    if "@" in parsed.netloc:
        host = parsed.netloc.rsplit("@", 1)[1]
        raise SetupError(
            f"{origin} must not hold credentials (`user:password@`): pass them through the AWS chain "
            f"(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile or an instance role) and give the endpoint "
            f"as {parsed.scheme}://{host}"
        )
    return url


class StoreUnavailableError(ConnectionError):
    """The object store did not answer an operation within its bounded attempts: the job's failure, not an
    image's. The message names the operation, the object and the endpoint."""


# pyarrow's words (the AWS SDK's error names) for failures of a store in passing, not of the request. Its retry
# strategy retries them, except where the SDK had begun writing the answer's body: a `503 SlowDown` answered to a
# ranged GET smaller than the error's own body fails as `INTERNAL_FAILURE ... Failed to flush response stream`.
_TRANSIENT = (
    "NETWORK_CONNECTION",
    "SLOW_DOWN",
    "SERVICE_UNAVAILABLE",
    "INTERNAL_FAILURE",
    "THROTTLING",
    "REQUEST_TIMEOUT",
    "HTTP status 5",
)


def is_transient(exc: BaseException) -> bool:
    """Whether pyarrow's `exc` is a store failing in passing (worth another attempt), not a wrong request."""
    if isinstance(exc, FileNotFoundError | PermissionError | StoreUnavailableError):
        return False
    return isinstance(exc, OSError) and any(marker in str(exc) for marker in _TRANSIENT)


# The last line of a traceback that ends in a `StoreUnavailableError`.
_OUTAGE_LINE = re.compile(r"^(?:[\w.]+\.)?StoreUnavailableError: (.+)$", re.MULTILINE)


def store_failure(exc: BaseException) -> StoreUnavailableError | None:
    """The `StoreUnavailableError` behind `exc`, if any, so that the run can fail with its one line.

    A read task's outage reaches the driver wrapped: Ray Data raises `UserCodeException(...) from` it, and Ray
    pickles that for the driver without its cause chain. What survives is the worker's traceback, in the text
    of the `RayTaskError`, whose last `StoreUnavailableError:` line is the message.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if type(current) is StoreUnavailableError:  # not Ray's wrapper class, which subclasses it
            # Ray Data's UDF wrapper appends lines of its own ("Failed to apply UDF transform ..."): keep ours.
            first = str(current).split("\n", 1)[0]
            return current if first == str(current) else StoreUnavailableError(first)
        todo += [getattr(current, "cause", None), current.__cause__, current.__context__]
    lines = _OUTAGE_LINE.findall(str(exc))
    return StoreUnavailableError(lines[-1]) if lines else None


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (`bucket`, `key`)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise ValueError(f"an object URI needs a bucket and a key: {uri!r}")
    return bucket, key


class S3Objects:
    """One boto3 client (thread-safe) for whole-object GETs and PUTs; each call returns its retries.

    A reset in the middle of a response body is not retried by botocore, which has handed the body over by
    then: `get` reads the object again, with the same backoff, while the attempts of the whole read stay under
    `2 * max_attempts`.
    """

    def __init__(self, settings: S3Settings) -> None:
        import boto3
        from botocore.config import Config

        self.settings = settings
        endpoint = settings.resolved_endpoint()
        config = Config(
            retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            # Custom endpoints (MinIO, Ceph, an IP) rarely resolve bucket subdomains; pyarrow uses paths too.
            s3={"addressing_style": "path"} if endpoint else None,
        )
        # A session per client: boto3's default session is not thread-safe to build clients from.
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=settings.resolved_region(), config=config
        )
        self.endpoint = self._client.meta.endpoint_url
        self._attempts = threading.local()
        # Fired once per HTTP attempt, retries included: the count botocore keeps to itself on failures.
        self._client.meta.events.register("before-send.s3", self._count_attempt)

    @property
    def client(self) -> Any:
        """The underlying boto3 client, for operations this class does not wrap (listing, conditional puts)."""
        return self._client

    def _count_attempt(self, **_: Any) -> None:
        self._attempts.n = getattr(self._attempts, "n", 0) + 1

    def _call(self, operation: str, uri: str, method: Any, **kwargs: Any) -> tuple[Any, int]:
        """One botocore call -> (its response, the HTTP attempts it took); failures classified."""
        from botocore.exceptions import BotoCoreError, ClientError

        self._attempts.n = 0
        try:
            return method(**kwargs), self._attempts.n
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in _NOT_FOUND:
                raise FileNotFoundError(f"{uri} does not exist ({code})") from exc
            if code in _FORBIDDEN:
                raise PermissionError(f"{uri}: access denied by {self.endpoint} ({code})") from exc
            if status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "RequestTimeout"):
                raise self._unavailable(operation, uri, exc) from exc
            raise OSError(f"S3 {operation} {uri} on {self.endpoint}: {code} {error.get('Message', '')}") from exc
        except BotoCoreError as exc:  # connection refused, reset, timed out: every attempt spent
            raise self._unavailable(operation, uri, exc) from exc

    def _unavailable(self, operation: str, uri: str, exc: BaseException) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"S3 {operation} {uri} on {self.endpoint} failed after {self._attempts.n} attempts: {exc}"
        )

    def get(self, uri: str) -> tuple[bytes, int]:
        """The object's bytes and the retries it took."""
        from botocore.exceptions import IncompleteReadError, ReadTimeoutError, ResponseStreamingError

        bucket, key = split_s3_uri(uri)
        attempts = 0
        reads = 0
        while True:
            response, used = self._call("GetObject", uri, self._client.get_object, Bucket=bucket, Key=key)
            attempts += used
            reads += 1
            try:
                return response["Body"].read(), attempts - 1
            except (IncompleteReadError, ResponseStreamingError, ReadTimeoutError) as exc:
                if attempts >= self.settings.max_attempts:
                    raise StoreUnavailableError(
                        f"S3 GetObject {uri} on {self.endpoint} failed after {attempts} attempts: the response "
                        f"body broke off each time ({exc})"
                    ) from exc
                delay = random.random() * min(20.0, 0.05 * 2.0 ** (reads - 1))  # botocore's, for non-throttling
                logger.info("reading %s broke off (%s); reading it again in %.1f s", uri, exc, delay)
                time.sleep(delay)

    def open_body(self, uri: str, first_byte: int = 0, if_match: str | None = None) -> tuple[Any, str, int]:
        """A GET from `first_byte` on, not yet read: (its streaming body, the object's ETag, the retries the
        request took). With `if_match`, a store whose object no longer has that ETag refuses (`OSError`, 412)."""
        bucket, key = split_s3_uri(uri)
        extra: dict[str, str] = {}
        if first_byte:
            extra["Range"] = f"bytes={first_byte}-"
        if if_match:
            extra["IfMatch"] = if_match
        response, attempts = self._call("GetObject", uri, self._client.get_object, Bucket=bucket, Key=key, **extra)
        return response["Body"], response.get("ETag", ""), attempts - 1

    def list_keys(self, prefix_uri: str, limit: int | None = None) -> list[tuple[str, int, int]]:
        """(key, size, last modified in ms) of the objects whose keys start with `prefix_uri`'s key (up to `limit`),
        page by page: one request per 1,000 keys that match, whatever else the bucket holds."""
        bucket, _, prefix = prefix_uri.removeprefix("s3://").partition("/")
        found: list[tuple[str, int, int]] = []
        token: str | None = None
        while True:
            extra: dict[str, object] = {"ContinuationToken": token} if token else {}
            if limit is not None:
                extra["MaxKeys"] = limit
            page, _ = self._call(
                "ListObjectsV2", prefix_uri, self._client.list_objects_v2, Bucket=bucket, Prefix=prefix, **extra
            )
            for item in page.get("Contents", []):
                found.append((item["Key"], item["Size"], int(item["LastModified"].timestamp() * 1000)))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token or (limit is not None and len(found) >= limit):
                return found

    def delete(self, uri: str) -> None:
        bucket, key = split_s3_uri(uri)
        self._call("DeleteObject", uri, self._client.delete_object, Bucket=bucket, Key=key)

    def put(self, uri: str, data: bytes) -> int:
        """Writes the object whole (S3 makes it visible at once, never in part); returns the retries it took.

        botocore sends a CRC32 of the body, which the store checks: a body cut short is refused, never stored.
        """
        bucket, key = split_s3_uri(uri)
        _, attempts = self._call("PutObject", uri, self._client.put_object, Bucket=bucket, Key=key, Body=data)
        return attempts - 1


def s3_objects(settings: S3Settings) -> S3Objects:
    """One client per process and settings: building one costs ~50 ms and a connection pool. Keyed by the
    endpoint and region as resolved now, so a client built before `AWS_ENDPOINT_URL` changed is not reused."""
    resolved = dataclasses.replace(
        settings, endpoint_url=settings.resolved_endpoint(), region=settings.resolved_region()
    )
    return _client_for(resolved)


@functools.lru_cache(maxsize=8)
def _client_for(settings: S3Settings) -> S3Objects:
    return S3Objects(settings)
