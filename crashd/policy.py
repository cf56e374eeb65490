"""The retry policy as pure functions: what a server's answer means, and when to try again.

Nothing here does I/O or reads a clock: callers pass ``now`` (seconds since the
epoch) and a ``random`` source, so every rule is a table test. DESIGN.md §4:

- 2xx → sent (``<id> OOPSID`` / ``<id> CORE``); 409 "already reported" → sent, a
  resend after a crash is harmless;
- 400, 401, 403, 413, 422 (and other 4xx) → rejected for good, with the server's words;
- 404 and redirects → the URL is wrong: retry slowly, and say so loudly;
- 408, 425, 429, 5xx and every transport failure → retry, with exponential
  backoff and full jitter, never before ``Retry-After``, never in a tight loop;
- a report still unsent ``expire_after`` seconds after crashd first saw it expires.

Two scales of backoff, because two kinds of failure differ in who else sees
them. When *this device* is offline (no DNS, no route) nobody else is affected,
so it retries soon (``base``, 60 s). When *the server* fails (5xx, 429,
timeouts, resets, refused connections) every device of the fleet fails at
once, and the retries must not come back as a wave: those use ``server_base``
(2 h, whoopsie's proven rescan interval). bench/fleet.py measured it: with a
60 s base for everything, a 1-hour outage of a 100,000-device fleet comes back
at 6.3 times the steady request rate; with 2 h for server failures, under 2 times.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

RETRY_AFTER_CAP = 24 * 3600.0
MISCONFIGURED_DELAY = 3600.0  # at least this long between tries while the URL answers 404
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")  # an OOPS id that can go into a URL
# RFC 9110 delay-seconds: ASCII digits only (str.isdigit() also takes "²" and "٣", which float() refuses).
_DELAY_SECONDS = re.compile(r"[0-9]+")
_REJECTED = frozenset({400, 401, 403, 413, 422})
_RETRY = frozenset({408, 425, 429})


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter (configurable: DESIGN.md §9)."""

    base: float = 60.0  # the device is offline
    cap: float = 6 * 3600.0
    expire_after: float = 14 * 24 * 3600.0
    server_base: float = 2 * 3600.0  # the server is failing, for the whole fleet

    def delay(self, attempts: int, random: Callable[[], float], *, server: bool = True) -> float:
        """Seconds to wait after the *attempts*-th failure: uniform in [floor, min(cap, base·2ⁿ⁻¹)].

        Full jitter spreads a fleet's retries over the whole window after an
        outage; the floor keeps even an unlucky draw from being a tight loop.
        """
        base = self.server_base if server else self.base
        ceiling = min(self.cap, base * 2 ** max(0, attempts - 1))
        floor = min(base, 1.0)
        return max(floor, ceiling * random())

    def interactive(self, within: float) -> Backoff:
        """The policy for an explicit run bounded to *within* seconds (``upload-all --timeout``).

        Someone is waiting and the run ends by itself, so server failures are
        retried at the device's scale and every window fits in the time given.
        """
        cap = max(min(self.cap, within / 2), min(self.base, 1.0))
        return replace(self, server_base=self.base, cap=cap)


@dataclass(frozen=True)
class Sent:
    oops_id: str | None = None
    core_requested: bool = False
    detail: str | None = None  # e.g. "the server already has this report (409 …)"


@dataclass(frozen=True)
class Rejected:
    reason: str


@dataclass(frozen=True)
class RetryAt:
    when: float
    reason: str
    misconfigured: bool = False  # the URL looks wrong: worth an error-level log line


Decision = Sent | Rejected | RetryAt


def classify(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    *,
    attempts: int,
    backoff: Backoff,
    random: Callable[[], float],
) -> Decision:
    """What a report POST's answer means; *attempts* counts this one."""
    text = _shorten(body.decode("utf-8", "replace").strip())
    summary = f"{status}: {text}" if text else str(status)
    if 200 <= status < 300:
        oops_id, _, command = text.partition(" ")
        if command in ("OOPSID", "CORE") and _TOKEN.fullmatch(oops_id):
            return Sent(oops_id, command == "CORE")
        return Sent(detail=text or None)
    if status == 409:
        return Sent(detail=f"the server already has this report ({summary})")
    if status in _REJECTED:
        return Rejected(summary)
    if status in _RETRY or status >= 500:
        return retry(summary, now, attempts, backoff, random, _header(headers, "Retry-After"))
    if status == 404 or 300 <= status < 400:
        when = retry(summary, now, attempts, backoff, random).when
        reason = f"the crash database URL looks wrong ({summary})"
        return RetryAt(max(when, now + MISCONFIGURED_DELAY), reason, misconfigured=True)
    return Rejected(summary)


def classify_core(
    status: int, body: bytes, now: float, *, attempts: int, backoff: Backoff, random: Callable[[], float]
) -> Decision:
    """What a submit-core answer means: 2xx sent, 4xx refused for good, anything else retry."""
    text = _shorten(body.decode("utf-8", "replace").strip())
    summary = f"submit-core answered {status}" + (f": {text}" if text else "")
    if 200 <= status < 300:
        return Sent()
    if 400 <= status < 500 and status not in _RETRY and status != 404:
        return Rejected(summary)
    return retry(summary, now, attempts, backoff, random)


def retry(
    reason: str,
    now: float,
    attempts: int,
    backoff: Backoff,
    random: Callable[[], float],
    retry_after: str | None = None,
    *,
    server: bool = True,
) -> RetryAt:
    """When to try again after a failure; never earlier than the server's ``Retry-After``.

    *server* says whether the whole fleet is likely to see this failure (see the module notes).
    """
    when = now + backoff.delay(attempts, random, server=server)
    asked = parse_retry_after(retry_after, now)
    return RetryAt(max(when, asked) if asked is not None else when, reason)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` (seconds or an HTTP date) as an absolute time, at most 24 h away; None if unusable.

    Total over every string: the value comes from a server (through the upload worker), so whatever
    it holds must cost at most this report's retry time, never the run.
    """
    if not value:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return now + min(float(value), RETRY_AFTER_CAP)  # a huge number is inf, capped: no int parsing
    import email.utils  # an HTTP date is rare: not a cost of every process that decides (~0.7 MiB idle)

    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None
    return min(max(when, now), now + RETRY_AFTER_CAP)


def expired(first_seen: float, when: float, backoff: Backoff) -> bool:
    """True when a retry at *when* would fall after the report's expiry."""
    return when - first_seen > backoff.expire_after


def _shorten(text: str, limit: int = 500) -> str:
    """A server's words as a report's reason: enough to read, never a megabyte in every record."""
    return text if len(text) <= limit else text[:limit] + "…"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    return next((value for key, value in headers.items() if key.lower() == lowered), None)
