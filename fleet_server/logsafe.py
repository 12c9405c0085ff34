"""Safe log lines for text that comes from devices or unauthenticated callers.

`text()` makes a value harmless for a one-line log record: control characters (newlines above
all, which would forge whole log lines) are escaped and the value is cut to a bounded length.
`RateLimitedLog` keeps an unauthenticated caller from flooding the log: per key (e.g. the peer
address and the kind of refusal) and overall, a token bucket lets a burst of lines through, then
counts what it suppresses and says so on the next line it lets through.

Owns no handlers or formatting; callers keep using their module's `logging.Logger`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from fleet_server.ratelimit import TokenBucket

MAX_CHARS = 80


def text(value: object, max_chars: int = MAX_CHARS) -> str:
    """`value` as one printable line: control characters escaped, at most about `max_chars` long."""
    raw = value if isinstance(value, str) else str(value)
    cut = raw[:max_chars]
    escaped = cut.encode("unicode_escape").decode("ascii") if not cut.isprintable() else cut
    if len(raw) > max_chars:
        escaped += f"...(+{len(raw) - max_chars} chars)"
    return escaped


def peer_host(peer: str) -> str:
    """gRPC peer string ('ipv4:1.2.3.4:5678', 'ipv6:[::1]:5678') without the port."""
    head, _, _ = peer.rpartition(":")
    return head or peer


class RateLimitedLog:
    """Lets `burst` lines per key through, then `rate_per_s`; a global bucket bounds all keys.

    Keys are bounded (`max_keys`, least recently used dropped), so varying the key cannot grow
    memory. Suppressed lines are counted per key and reported on that key's next line.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        rate_per_s: float = 0.2,
        burst: float = 5.0,
        global_rate_per_s: float = 2.0,
        global_burst: float = 20.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._rate, self._burst = rate_per_s, burst
        self._global = TokenBucket(rate_per_s=global_rate_per_s, burst=global_burst)
        self._keys: OrderedDict[str, tuple[TokenBucket, int]] = OrderedDict()
        self._max_keys = max_keys
        self._clock = clock
        self.suppressed_total = 0

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """Log `msg % args` at WARNING unless `key` (or everyone) is over budget. Returns logged."""
        now = self._clock()
        bucket, suppressed = self._keys.pop(key, (None, 0))
        if bucket is None:
            bucket = TokenBucket(rate_per_s=self._rate, burst=self._burst)
        allowed = bucket.allow(now) and self._global.allow(now)
        if not allowed:
            self.suppressed_total += 1
            self._remember(key, bucket, suppressed + 1)
            return False
        self._remember(key, bucket, 0)
        if suppressed:
            self._logger.warning(msg + " (suppressed %d similar lines)", *args, suppressed)
        else:
            self._logger.warning(msg, *args)
        return True

    def _remember(self, key: str, bucket: TokenBucket, suppressed: int) -> None:
        self._keys[key] = (bucket, suppressed)
        while len(self._keys) > self._max_keys:
            self._keys.popitem(last=False)
