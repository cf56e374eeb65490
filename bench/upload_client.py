"""upload_client: the per-POST cost of an HTTP client, against bare ``http.client`` in the same run.

Issue 15 asks for a client with less per-request overhead than ``requests`` in the upload
worker. Each client posts the same kind of body — a realistic ~3 KB "deps" report
(``bench/reports.py``) encoded as BSON, round-unique so daisy never answers 409 — on one
kept-alive connection to the loopback daisy, one POST at a time (as delivery sends):

* **http.client** — the floor: ``HTTPConnection.request`` + ``getresponse().read()``;
* **urllib3** — an ``HTTPConnectionPool`` of one connection, ``preload_content=False``;
* **requests** — a ``Session`` with ``trust_env`` off and the proxies passed (what crashd did);
* **crashd** — :class:`crashd.uploader.HttpTransport`, what crashd sends with now.

Rounds interleave the clients so load changes hit all of them alike; each figure is the
median over rounds of a client's time per POST, and the ratio is that over http.client's
in the same round. The server is a separate process sharing the 2 CPUs, so the floor
includes the server's time: the difference between a client and the floor is the
client's own overhead.
"""

from __future__ import annotations

import http.client
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import bson

from bench._common import TOKEN, daisy_server
from bench.reports import deps_report

COUNT, ROUNDS = 300, 5
HEADERS = {"Content-Type": "application/octet-stream", "X-Whoopsie-Version": "bench"}


def _bodies(start: int, count: int) -> list[bytes]:
    return [bson.encode(deps_report(start + i)) for i in range(count)]


def _http_client(url: str) -> tuple[Callable[[bytes], int], Callable[[], None]]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)

    def post(body: bytes) -> int:
        conn.request("POST", f"/{TOKEN}", body, HEADERS)
        response = conn.getresponse()
        response.read()
        return response.status

    return post, conn.close


def _urllib3(url: str) -> tuple[Callable[[bytes], int], Callable[[], None]]:
    import urllib3

    parts = urlsplit(url)
    pool = urllib3.HTTPConnectionPool(parts.hostname, parts.port, maxsize=1, retries=False, timeout=10.0)

    def post(body: bytes) -> int:
        response = pool.urlopen("POST", f"/{TOKEN}", body=body, headers=HEADERS, preload_content=False)
        response.read(64 * 1024)
        response.release_conn()
        return response.status

    return post, pool.close


def _requests(url: str) -> tuple[Callable[[bytes], int], Callable[[], None]]:
    import requests

    session = requests.Session()
    session.trust_env = False
    proxies = requests.utils.get_environ_proxies(url)

    def post(body: bytes) -> int:
        with session.post(
            f"{url}/{TOKEN}", data=body, headers=HEADERS, timeout=(10, 10), stream=True, proxies=proxies,
            allow_redirects=False,
        ) as response:  # fmt: skip
            for _ in response.iter_content(8192):
                pass
            return response.status_code

    return post, session.close


def _crashd(url: str) -> tuple[Callable[[bytes], int], Callable[[], None]]:
    from crashd.uploader import HttpTransport

    transport = HttpTransport(10, 10)
    return (lambda body: transport.post(f"{url}/{TOKEN}", body).status), transport.close


CLIENTS: dict[str, Callable[[str], tuple[Callable[[bytes], int], Callable[[], None]]]] = {
    "http.client": _http_client,
    "urllib3": _urllib3,
    "requests": _requests,
    "crashd": _crashd,
}


def _time(make: Callable[[str], tuple[Callable[[bytes], int], Callable[[], None]]], url: str,
          bodies: list[bytes]) -> float:  # fmt: skip
    """Seconds per POST over *bodies*, after one warm-up POST that opens the connection."""
    post, close = make(url)
    try:
        post(bson.encode({"warm": "up", "n": time.time_ns()}))
        started = time.perf_counter()
        for body in bodies:
            status = post(body)
            if status != 200:
                raise RuntimeError(f"the loopback daisy answered {status}")
        return (time.perf_counter() - started) / len(bodies)
    finally:
        close()


def run(quick: bool = False) -> dict[str, object]:
    count, rounds = (60, 2) if quick else (COUNT, ROUNDS)
    per_post: dict[str, list[float]] = {name: [] for name in CLIENTS}
    ratios: dict[str, list[float]] = {name: [] for name in CLIENTS}
    with (
        tempfile.TemporaryDirectory() as tmp,
        daisy_server(Path(tmp) / "daisy.log", "--core-policy", "never") as url,
    ):
        start = time.time_ns() % 10**9 * 10  # round-unique Dates across runs too
        for round_ in range(rounds):
            seconds = {}
            for i, (name, make) in enumerate(CLIENTS.items()):
                bodies = _bodies(start + (round_ * len(CLIENTS) + i) * count, count)
                seconds[name] = _time(make, url, bodies)
            for name, value in seconds.items():
                per_post[name].append(value)
                ratios[name].append(value / seconds["http.client"])
    result: dict[str, object] = {}
    for name in CLIENTS:
        ms = statistics.median(per_post[name]) * 1000
        ratio = statistics.median(ratios[name])
        low, high = min(ratios[name]), max(ratios[name])
        print(
            f"upload_client: {name:12s} {ms:6.3f} ms per POST   x{ratio:4.2f} of http.client ({low:.2f}-{high:.2f})"
        )
        result[name] = {"ms_per_post": ms, "ratio": ratio, "ratio_range": [low, high]}
    summary = ", ".join(f"{name} x{result[name]['ratio']:.2f}" for name in CLIENTS)  # type: ignore[index]
    print(f"SUMMARY upload_client: per POST against bare http.client: {summary}")
    return result


if __name__ == "__main__":
    run()
