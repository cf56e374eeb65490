"""crashd.budget's pure decisions, as tables: what is a duplicate of what, and what goes to fit a budget."""

from __future__ import annotations

import pytest

from crashd.budget import Entry, Group, collapse, counted, duplicate_key, fit, max_use_bytes, parse_size

DAY = 86400.0
MiB = 1024**2
GiB = 1024**3


def crash(exe: str = "/usr/bin/loop", version: str = "1.0", top: str = "f\ng", **extra: str) -> dict[str, str]:
    return {"ProblemType": "Crash", "ExecutablePath": exe, "Package": f"loop {version}", "Signal": "11",
            "StacktraceTop": top, **extra}  # fmt: skip


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (crash(), crash(), True),
        (crash(), crash(ProcCmdline="other args"), True),  # only signature, executable and version count
        (crash(), crash(version="1.1"), False),
        (crash(), crash(exe="/usr/bin/other"), False),
        (crash(), crash(top="f\nh"), False),
        (crash(), {**crash(), "Signal": "6"}, False),
        (crash(), {**crash(), "Package": "loop"}, False),  # no version is not "1.0"
    ],
)
def test_duplicate_key_is_signature_executable_and_version(a, b, same) -> None:
    assert duplicate_key(a, 1000) is not None
    assert (duplicate_key(a, 1000) == duplicate_key(b, 1000)) is same


def test_another_users_crash_is_never_a_duplicate() -> None:
    assert duplicate_key(crash(), 1000) != duplicate_key(crash(), 1001)
    assert duplicate_key(crash(), 0) != duplicate_key(crash(), 1000)


def test_a_report_without_a_signature_has_no_key() -> None:
    assert duplicate_key(crash(top="?? ()\n?? ()"), 0) is None  # unsymbolised: no signature
    assert duplicate_key({"ProblemType": "Crash", "ExecutablePath": "/usr/bin/x"}, 0) is None


def entry(name: str, mtime: float, key: str | None = "k", sent: bool = False, size: int = 1, busy: bool = False):
    return Entry(name, key, size, mtime, sent, busy)


# (entries, known groups, expected duplicates, expected kept per key, expected sent per key)
COLLAPSE = [
    # a loop of three: the oldest is kept
    ([entry("b", 2), entry("a", 1), entry("c", 3)], {}, {"b", "c"}, {"k": "a"}, {"k": False}),
    # outside the window: a new group, sent again
    ([entry("a", 1), entry("b", 1 + DAY)], {}, set(), {"k": "b"}, {"k": False}),
    # different keys, and reports without one, never collapse
    ([entry("a", 1, "k"), entry("b", 2, "j"), entry("c", 3, None), entry("d", 4, None)], {}, set(),
     {"k": "a", "j": "b"}, {"k": False, "j": False}),
    # the kept one was sent: later ones of the window are duplicates (removed, not sent)
    ([entry("a", 1, sent=True), entry("b", 2)], {}, {"b"}, {"k": "a"}, {"k": True}),
    # the sent file was replaced under the same name by a new crash: that one is a duplicate too
    ([entry("a", 5)], {"k": Group("k", "a", 1, sent=True)}, {"a"}, {"k": "a"}, {"k": True}),
    # the same name, unsent: it is the kept report itself (rewritten with its counts)
    ([entry("a", 5), entry("b", 6)], {"k": Group("k", "a", 1, collapsed=3)}, {"b"}, {"k": "a"}, {"k": False}),
    # the unsent kept report is gone: the next one heads the group
    ([entry("b", 6), entry("c", 7)], {"k": Group("k", "a", 1)}, {"c"}, {"k": "b"}, {"k": False}),
    # sent before crashd tidied, inside the window: left alone, never a duplicate
    ([entry("a", 1), entry("b", 2, sent=True)], {}, set(), {"k": "a"}, {"k": False}),
]


@pytest.mark.parametrize(("entries", "groups", "duplicates", "kept", "sent"), COLLAPSE)
def test_collapse(entries, groups, duplicates, kept, sent) -> None:
    decision = collapse(entries, groups, DAY, now=10)
    assert set(decision.duplicates) == duplicates
    assert {key: group.kept for key, group in decision.groups.items()} == kept
    assert {key: group.sent for key, group in decision.groups.items()} == sent


def test_collapse_keeps_counts_and_forgets_closed_groups_whose_report_is_gone() -> None:
    groups = {"k": Group("k", "a", 1, sent=True, after_sent=7), "old": Group("old", "z", 1, sent=True)}
    decision = collapse([entry("a", 1, sent=True)], groups, DAY, now=2 * DAY)
    assert decision.groups == {"k": groups["k"]}  # "old": window closed, report gone
    assert collapse([], groups, DAY, now=2).groups == groups  # window open: remembered


# (entries, budget, duplicates, expected removals in order)
FIT = [
    ([entry("a", 1, size=5), entry("b", 2, size=5)], 10, (), []),  # fits
    # unique unsent: oldest first, newest kept up to the budget
    ([entry(n, t, size=4) for t, n in enumerate("abcde")], 10, (), ["a", "b", "c"]),
    # sent and duplicates go first (oldest first), even when newer than a unique unsent one
    ([entry("u", 1, size=4), entry("s", 5, sent=True, size=4), entry("d", 3, size=4)], 4, {"d"}, ["d", "s"]),
    # ... and a unique one only once nothing else can go
    ([entry("u", 1, size=4), entry("v", 2, size=4), entry("s", 3, sent=True, size=4)], 4, (), ["s", "u"]),
    # busy reports count but are never chosen
    ([entry("a", 1, size=8, busy=True), entry("b", 2, size=4)], 10, (), ["b"]),
    ([entry("a", 1, size=20, busy=True)], 10, (), []),
    # one report larger than the whole budget is not kept
    ([entry("a", 1, size=20)], 10, (), ["a"]),
]


@pytest.mark.parametrize(("entries", "limit", "duplicates", "removed"), FIT)
def test_fit(entries, limit, duplicates, removed) -> None:
    assert [removal.name for removal in fit(entries, limit, duplicates)] == removed


def test_fit_says_why() -> None:
    entries = [entry("d", 1, size=2), entry("s", 2, sent=True, size=2), entry("u", 3, size=2)]
    assert [(r.name, r.reason) for r in fit(entries, 0, {"d"})] == [
        ("d", "duplicate"), ("s", "sent"), ("u", "unsent, over the budget"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "size"),
    [("4096", 4096), ("10M", 10 * MiB), ("1G", GiB), ("512k", 512 * 1024), ("1.5GiB", 3 * GiB // 2),
     ("2T", 2 * 1024 * GiB), (" 10 MB ", 10 * MiB)],
)  # fmt: skip
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "10X", "-1M", "ten", "1e9"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="must be a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("setting", "filesystem", "limit"),
    [("auto", 5 * GiB, GiB // 2), ("auto", 100 * GiB, GiB), ("AUTO", 64 * 1024, MiB), ("auto", 0, MiB),
     ("10M", 100 * GiB, 10 * MiB), ("1K", 64 * 1024, 1024)],
)
def test_max_use_bytes(setting: str, filesystem: int, limit: int) -> None:
    assert max_use_bytes(setting, filesystem) == limit


@pytest.mark.parametrize(("value", "crashes"), [(None, 1), ("3", 3), (" 7 ", 7), ("0", 1), ("x", 1)])
def test_counted(value: str | None, crashes: int) -> None:
    assert counted({} if value is None else {"CrashCounter": value}) == crashes
