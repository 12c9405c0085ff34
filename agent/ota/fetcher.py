"""HTTP transport for OTA: the ngclient fetcher and resumable, hash-bound downloads (urllib3).

Owns the bytes on the wire: `HttpFetcher` implements tuf's `FetcherInterface` for metadata (tuf
enforces the length limits); `Downloader.download` resumes a target into ``<dest>.partial`` with
HTTP Range, never writes past the expected length (endless data), checks the SHA-256 of the whole
file and only then renames it into place; `Downloader.fetch_range` reads one span for delta
rebuilds. Both send the device's `OtaCredential` (the server's short-lived token) when given one.
Retries are capped, with exponential backoff and jitter; a 4xx status or a hash/length mismatch
is terminal (retrying the same bytes cannot help). Foreign exceptions stop here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import urllib3
from tuf.api import exceptions as tuf_exc
from tuf.ngclient.fetcher import FetcherInterface

from agent.errors import IntegrityError, TransportError

logger = logging.getLogger(__name__)

_BLOCK = 1 << 16
_T = TypeVar("_T")
# Only re-send a request whose pooled keep-alive connection turned out dead before any answer;
# statuses and broken bodies are handled (and counted) by our own retry loop.
_RETRY_STALE = urllib3.Retry(total=1, connect=1, read=1, redirect=0, status=0, other=0, raise_on_status=False)


TOKEN_HEADER = "X-Edgeloop-Ota-Token"  # noqa: S105 (a header name)


class OtaCredential:
    """The newest OTA access token the server pushed in DesiredState (thread-safe, memory only).

    The server mints a short-lived token per device and re-sends it before half its lifetime has
    passed; `offer` keeps the one that expires last. Fetches wait (off the event loop, once, at most
    `first_wait_s`) for the first token after a start, so the first repository check does not race
    the Sync session; without any (a server in public mode that sends none) requests go anonymous.
    """

    def __init__(self, *, first_wait_s: float = 15.0) -> None:
        self._lock = threading.Lock()
        self._first = threading.Event()
        self._first_wait_s = first_wait_s
        self._token = ""
        self._expires_ms = 0

    def offer(self, token: str, expires_at_ms: int) -> None:
        if not token:
            return
        with self._lock:
            if expires_at_ms >= self._expires_ms:
                self._token, self._expires_ms = token, expires_at_ms
        self._first.set()

    def headers(self) -> dict[str, str]:
        if not self._first.is_set() and not _on_event_loop():
            self._first.wait(self._first_wait_s)
            self._first.set()  # waited once: from now on go without rather than stall every fetch
        with self._lock:
            return {TOKEN_HEADER: self._token} if self._token else {}


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class HttpStatusError(TransportError):
    """The server answered with an error status; `terminal` for 4xx."""

    def __init__(self, url: str, status: int) -> None:
        super().__init__(f"HTTP {status} for {url}")
        self.status = status
        self.terminal = 400 <= status < 500


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    initial_s: float = 0.2
    max_s: float = 5.0
    jitter: float = 0.5  # fraction of the delay randomised


class HttpFetcher(FetcherInterface):
    """tuf `FetcherInterface` over a urllib3 pool (metadata only; targets use `Downloader`)."""

    def __init__(
        self, pool: urllib3.PoolManager, *, timeout_s: float = 15.0, credential: OtaCredential | None = None
    ) -> None:
        self._pool = pool
        self._timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self._credential = credential

    def _fetch(self, url: str) -> Iterator[bytes]:
        headers = self._credential.headers() if self._credential is not None else {}
        try:
            resp = self._pool.request(
                "GET",
                url,
                headers=headers,
                preload_content=False,
                timeout=self._timeout,
                retries=_RETRY_STALE,
            )
        except urllib3.exceptions.HTTPError as err:
            raise tuf_exc.DownloadError(f"cannot fetch {url}: {err}") from err
        if resp.status != 200:
            _discard(resp)
            raise tuf_exc.DownloadHTTPError(f"HTTP {resp.status} for {url}", resp.status)
        return self._chunks(resp)

    @staticmethod
    def _chunks(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        done = False
        try:
            yield from resp.stream(_BLOCK)
            done = True
        except urllib3.exceptions.HTTPError as err:
            raise tuf_exc.DownloadError(f"stream failed: {err}") from err
        finally:
            _release(resp, complete=done)


class Downloader:
    """Resumable target downloads and range reads with capped retries."""

    def __init__(
        self,
        pool: urllib3.PoolManager,
        *,
        policy: RetryPolicy | None = None,
        timeout_s: float = 15.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        credential: OtaCredential | None = None,
    ) -> None:
        self._pool = pool
        self._credential = credential
        self._policy = policy or RetryPolicy()
        self._timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.bytes_received = 0

    def download(self, url: str, dest: Path, *, length: int, sha256: str) -> Path:
        """Download `url` to `dest` (via ``dest.partial``, resumed across calls and restarts).

        Raises:
            IntegrityError: more bytes than `length`, or the content does not hash to `sha256`.
            HttpStatusError: a 4xx answer (terminal) or 5xx after every retry.
            TransportError: the connection kept failing.
        """
        partial = dest.with_name(dest.name + ".partial")
        self._retrying(lambda: self._attempt(url, partial, length))
        if _sha256_file(partial) != sha256:
            partial.unlink(missing_ok=True)
            raise IntegrityError(f"{url}: content does not match the signed sha256")
        os.replace(partial, dest)
        return dest

    def fetch_range(self, url: str, start: int, length: int) -> bytes:
        """Bytes [start, start+length) of `url` (HTTP Range; a 200 answer is refused).

        Raises:
            IntegrityError: the server sent a different number of bytes.
            HttpStatusError, TransportError: as for `download`.
        """
        return self._retrying(lambda: self._range_once(url, start, length))

    def _retrying(self, attempt: Callable[[], _T]) -> _T:
        policy, delay = self._policy, self._policy.initial_s
        for n in range(1, policy.attempts + 1):
            try:
                return attempt()
            except HttpStatusError as err:
                if err.terminal or n == policy.attempts:
                    raise
                logger.warning("download attempt %d failed: %s", n, err)
            except TransportError as err:
                if n == policy.attempts:
                    raise
                logger.warning("download attempt %d failed: %s", n, err)
            self._sleep(delay * (1 - policy.jitter * self._rng.random()))
            delay = min(policy.max_s, delay * 2)
        raise AssertionError("unreachable")

    def _request(self, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        if self._credential is not None:
            headers = {**headers, **self._credential.headers()}
        try:
            resp = self._pool.request(
                "GET",
                url,
                headers=headers,
                preload_content=False,
                timeout=self._timeout,
                retries=_RETRY_STALE,
            )
        except urllib3.exceptions.HTTPError as err:
            raise TransportError(f"cannot fetch {url}: {err}") from err
        if resp.status >= 400:
            _discard(resp)
            raise HttpStatusError(url, resp.status)
        return resp

    def _attempt(self, url: str, partial: Path, length: int) -> None:
        have = partial.stat().st_size if partial.exists() else 0
        if have > length:
            have = 0
        if have == length:
            return
        resp = self._request(url, {"Range": f"bytes={have}-"} if have else {})
        if resp.status != 206:
            have = 0  # server ignored the range: start over
        done = False
        try:
            with partial.open("r+b" if have else "wb") as fh:
                fh.seek(have)
                fh.truncate()
                while block := resp.read1(_BLOCK):  # read1: keep what arrived before a cut
                    if have + len(block) > length:
                        raise IntegrityError(f"{url}: more than the signed length {length}")
                    fh.write(block)
                    have += len(block)
                    self.bytes_received += len(block)
                fh.flush()
                os.fsync(fh.fileno())
            done = True
        except urllib3.exceptions.HTTPError as err:
            raise TransportError(f"{url}: stream broke at {have} bytes: {err}") from err
        finally:
            _release(resp, complete=done)
        if have < length:
            raise TransportError(f"{url}: truncated at {have} of {length} bytes")

    def _range_once(self, url: str, start: int, length: int) -> bytes:
        resp = self._request(url, {"Range": f"bytes={start}-{start + length - 1}"})
        try:
            if resp.status != 206:
                raise IntegrityError(f"{url}: server ignored the Range request")
            data = resp.read(length + 1)
        except urllib3.exceptions.HTTPError as err:
            raise TransportError(f"{url}: range read failed: {err}") from err
        finally:
            resp.release_conn()
        if len(data) != length:
            raise TransportError(f"{url}: range returned {len(data)} of {length} bytes")
        self.bytes_received += len(data)
        return bytes(data)


def _release(resp: urllib3.BaseHTTPResponse, *, complete: bool) -> None:
    """Return the connection to the pool; one abandoned mid-body (endless data, a cut) is closed."""
    if not complete:
        resp.close()
    resp.release_conn()


def _discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Read the rest of an error body so the pooled connection is clean for the next request."""
    try:
        resp.drain_conn()
    except urllib3.exceptions.HTTPError:
        pass
    resp.release_conn()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    return _sha256_file(path)
