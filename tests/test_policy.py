"""The retry policy as tables: answers, Retry-After, backoff and expiry, with an injected clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crashd.policy import (
    MISCONFIGURED_DELAY,
    RETRY_AFTER_CAP,
    Backoff,
    Rejected,
    RetryAt,
    Sent,
    classify,
    classify_core,
    expired,
    parse_retry_after,
    retry,
)

NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
OOPS = "3a1e5c2e-97d4-11ef-8d5b-0242ac120002"
POLICY = Backoff(base=60, cap=21600, expire_after=14 * 86400, server_base=3600)


def decide(status, body="", headers=None, attempts=1, draw=0.5):
    return classify(
        status, headers or {}, body.encode(), NOW, attempts=attempts, backoff=POLICY, random=lambda: draw
    )


SENT = [
    (200, f"{OOPS} OOPSID", Sent(OOPS, False)),
    (200, f"{OOPS} CORE", Sent(OOPS, True)),
    (200, f"{OOPS} CORE\n", Sent(OOPS, True)),
    (201, f"{OOPS} OOPSID", Sent(OOPS, False)),
    (200, "Crash report successfully submitted.", Sent(detail="Crash report successfully submitted.")),  # Snap
    (200, "", Sent()),
    (200, f"{OOPS} BUG 123", Sent(detail=f"{OOPS} BUG 123")),  # a command we do not know
    (200, "../../etc CORE", Sent(detail="../../etc CORE")),  # an id that cannot go in a URL
]


@pytest.mark.parametrize(("status", "body", "expected"), SENT)
def test_accepted(status, body, expected):
    assert decide(status, body) == expected


def test_409_already_reported_counts_as_sent():
    decision = decide(409, "Crash already reported.")
    assert isinstance(decision, Sent) and "already has this report" in decision.detail


@pytest.mark.parametrize("status", [400, 401, 403, 413, 422, 418])
def test_rejected_for_good_with_the_servers_words(status):
    assert decide(status, "Incomplete crash report.") == Rejected(f"{status}: Incomplete crash report.")


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
def test_retried(status):
    decision = decide(status, "busy")
    assert isinstance(decision, RetryAt) and not decision.misconfigured
    assert decision.when == NOW + 1800  # a server failure: half of the 1 h window, drawn 0.5


@pytest.mark.parametrize("status", [404, 301, 302, 307])
def test_wrong_url_retries_slowly_and_loudly(status):
    decision = decide(status, "Not Found")
    assert isinstance(decision, RetryAt) and decision.misconfigured
    assert decision.when >= NOW + MISCONFIGURED_DELAY
    assert "URL looks wrong" in decision.reason


RETRY_AFTER = [
    ("120", NOW + 120),
    ("  7 ", NOW + 7),
    ("0", NOW),
    ("999999", NOW + RETRY_AFTER_CAP),  # capped at 24 h
    ("Tue, 14 Nov 2023 22:23:20 GMT", NOW + 600),
    ("Tue, 14 Nov 2023 22:00:00 GMT", NOW),  # in the past: now
    ("Wed, 14 Nov 2024 22:13:20 GMT", NOW + RETRY_AFTER_CAP),
    ("soon", None),
    ("-5", None),
    ("", None),
    (None, None),
    ("1.5", None),
    ("²", None),  # str.isdigit() says yes; float() raised and aborted root's upload-all (issue 11)
    ("٣", None),  # an Arabic-Indic digit: a digit to Python, not to HTTP
    ("9" * 400, NOW + RETRY_AFTER_CAP),  # more than a float holds: capped, not an error
    ("Fri, 31 Dec 9999 23:59:59 GMT", NOW + RETRY_AFTER_CAP),
    ("Mon, 99 Feb 2024 00:00:00 GMT", None),
]


@pytest.mark.parametrize(("value", "expected"), RETRY_AFTER)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, NOW) == expected


@given(st.one_of(st.text(), st.from_regex(r"\s*[0-9]{1,400}\s*"), st.none()))
def test_parse_retry_after_is_total(value):
    """Whatever a server (or a broken worker) puts in the header: a time within 24 h, or None."""
    when = parse_retry_after(value, NOW)
    assert when is None or NOW <= when <= NOW + RETRY_AFTER_CAP


def test_retry_after_is_honoured_over_a_shorter_backoff():
    decision = decide(429, headers={"retry-after": "3600"}, draw=0.0)
    assert decision.when == NOW + 3600
    decision = decide(503, headers={"Retry-After": "Tue, 14 Nov 2023 22:14:20 GMT"}, draw=1.0)
    assert decision.when == NOW + 3600  # the backoff is longer than the date asks: the later one wins


BACKOFF = [
    (1, 1.0, 60),
    (2, 1.0, 120),
    (3, 1.0, 240),
    (9, 1.0, 15360),
    (10, 1.0, 21600),  # capped at 6 h
    (50, 1.0, 21600),
    (1, 0.0, 1.0),  # full jitter can draw 0: the floor keeps it out of a tight loop
    (4, 0.25, 120),
]


@pytest.mark.parametrize(("attempts", "draw", "delay"), BACKOFF)
def test_backoff_is_exponential_with_full_jitter_and_a_cap(attempts, draw, delay):
    assert POLICY.delay(attempts, lambda: draw, server=False) == delay


SERVER_BACKOFF = [(1, 1.0, 3600), (2, 1.0, 7200), (3, 1.0, 14400), (4, 1.0, 21600), (1, 0.5, 1800)]


@pytest.mark.parametrize(("attempts", "draw", "delay"), SERVER_BACKOFF)
def test_server_failures_back_off_at_fleet_scale(attempts, draw, delay):
    assert POLICY.delay(attempts, lambda: draw) == delay


def test_offline_device_retries_soon_but_a_failing_server_is_left_alone():
    offline = retry("no DNS", NOW, 1, POLICY, lambda: 1.0, server=False)
    failing = retry("503", NOW, 1, POLICY, lambda: 1.0)
    assert (offline.when, failing.when) == (NOW + 60, NOW + 3600)


def test_interactive_runs_fit_their_retries_in_the_time_given():
    bounded = POLICY.interactive(40)
    assert bounded.delay(1, lambda: 1.0) == 20  # server failures at device scale, capped at half the time
    assert bounded.delay(9, lambda: 1.0, server=False) == 20
    assert bounded.expire_after == POLICY.expire_after


def test_backoff_spreads_a_fleet_over_the_whole_window():
    rng = random.Random(7)
    delays = [POLICY.delay(5, rng.random, server=False) for _ in range(10_000)]
    assert 1.0 <= min(delays) < 20 and 940 < max(delays) <= 960
    assert 400 < sum(delays) / len(delays) < 560  # uniform over [0, 960]: mean 480


def test_tiny_bases_for_tests_keep_a_proportionate_floor():
    assert Backoff(base=0.05, server_base=0.05).delay(1, lambda: 0.0) == 0.05


def test_expiry():
    assert not expired(NOW, NOW + 14 * 86400, POLICY)
    assert expired(NOW, NOW + 14 * 86400 + 1, POLICY)


CORE = [
    (200, Sent()),
    (400, Rejected("submit-core answered 400: bad")),
    (404, None),
    (429, None),
    (500, None),
]


@pytest.mark.parametrize(("status", "expected"), CORE)
def test_core_answers(status, expected):
    decision = classify_core(status, b"bad", NOW, attempts=1, backoff=POLICY, random=lambda: 0.5)
    if expected is None:
        assert isinstance(decision, RetryAt) and decision.when == NOW + 1800
    else:
        assert decision == expected
