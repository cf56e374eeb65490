"""upload_client: the per-POST cost of an HTTP client, against bare ``http.client`` in the same run.

Issue 15 asks for a client with less per-request overhead than ``requests`` in the upload
worker. Each client posts the same kind of body — a realistic ~3 KB "deps" report
(``bench/reports.py``) encoded as BSON, round-unique so daisy never answers 409 — on one
kept-alive connection to the loopback daisy, one POST at a time (as delivery sends):

* **http.client** — the floor: ``HTTPConnection.request`` + ``getresponse().read()``;
* **urllib3** — an ``HTTPConnectionPool`` of one connection, ``preload_content=False``;
* **requests** — a ``Session`` with ``trust_env`` off and the proxies passed (what crashd did);
* **crashd** — :class:`crashd.uploader.HttpTransport`, what crashd sends with now.

Within a round the clients take turns, 20 POSTs each, all four connections open at once, so
load changes hit all of them alike. Two ratios to http.client's in the same round, median
(and range) over rounds: wall time per POST, and the client's own CPU time per POST
(``thread_time``), which load on a shared machine hardly changes. The server is a separate
process sharing the 2 CPUs, so the wall floor includes the server's time.
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


def _round(url: str, bodies: dict[str, list[bytes]], block: int = 20) -> dict[str, tuple[float, float]]:
    """Seconds per POST of each client in one round: every client's connection open at once (one
    warm-up POST each), then blocks of *block* POSTs taken by each client in turn, in a rotating
    order, so that whatever else loads the machine loads every client alike. Per client: (wall
    seconds, this thread's CPU seconds) per POST."""
    clients = {name: make(url) for name, make in CLIENTS.items()}
    spent = dict.fromkeys(clients, 0.0)
    cpu = dict.fromkeys(clients, 0.0)
    try:
        for post, _ in clients.values():
            post(bson.encode({"warm": "up", "n": time.time_ns()}))
        names = list(clients)
        count = len(next(iter(bodies.values())))
        for turn, start in enumerate(range(0, count, block)):
            for name in names[turn % len(names) :] + names[: turn % len(names)]:
                post = clients[name][0]
                started, started_cpu = time.perf_counter(), time.thread_time()
                for body in bodies[name][start : start + block]:
                    if (status := post(body)) != 200:
                        raise RuntimeError(f"the loopback daisy answered {status}")
                spent[name] += time.perf_counter() - started
                cpu[name] += time.thread_time() - started_cpu
    finally:
        for _, close in clients.values():
            close()
    return {name: (spent[name] / count, cpu[name] / count) for name in clients}


def run(quick: bool = False) -> dict[str, object]:
    count, rounds = (60, 2) if quick else (COUNT, ROUNDS)
    wall: dict[str, list[float]] = {name: [] for name in CLIENTS}
    cpu: dict[str, list[float]] = {name: [] for name in CLIENTS}
    with (
        tempfile.TemporaryDirectory() as tmp,
        daisy_server(Path(tmp) / "daisy.log", "--core-policy", "never") as url,
    ):
        start = time.time_ns() % 10**9 * 10  # round-unique Dates across runs too
        for round_ in range(rounds):
            bodies = {
                name: _bodies(start + (round_ * len(CLIENTS) + i) * count, count)
                for i, name in enumerate(CLIENTS)
            }
            seconds = _round(url, bodies)
            for name, (wall_s, cpu_s) in seconds.items():
                wall[name].append(wall_s / seconds["http.client"][0])
                cpu[name].append(cpu_s / seconds["http.client"][1])
            floor = seconds["http.client"]
            print(f"upload_client: round {round_ + 1}: http.client {floor[0] * 1000:.3f} ms wall, "
                  f"{floor[1] * 1000:.3f} ms CPU per POST")  # fmt: skip
    result: dict[str, object] = {}
    for name in CLIENTS:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"upload_client: {name:12s} wall x{w:4.2f} ({min(wall[name]):.2f}-{max(wall[name]):.2f}), "
              f"client CPU x{c:4.2f} ({min(cpu[name]):.2f}-{max(cpu[name]):.2f}) of http.client's")  # fmt: skip
        result[name] = {"wall_ratio": w, "cpu_ratio": c, "wall_ratios": wall[name], "cpu_ratios": cpu[name]}
    summary = ", ".join(f"{name} x{statistics.median(cpu[name]):.2f}" for name in CLIENTS)
    print(f"SUMMARY upload_client: client CPU per POST against bare http.client: {summary}")
    return result


if __name__ == "__main__":
    run()
