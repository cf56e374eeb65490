"""A fleet of crash reporters against one crash database that goes down for an hour.

Why a simulation: the point of crashd's retry policy (``crashd.policy.Backoff``) is what a
*fleet* does to the server after an outage, and no test on one machine shows that. So
this drives the real ``Backoff.delay`` (imported, not re-implemented) for every failed
report of 100,000 simulated devices, next to whoopsie's policy (retry only at the
device's 2-hourly rescan, whoopsie.md §3.1), and compares the request rate per minute.

Model (all times in seconds, 0 = the server goes down):

- each device writes crash reports as a Poisson process, ``REPORTS_PER_DAY`` a day
  (4/day x 100,000 devices ≈ 278 reports/min); every report is tried at once;
- during the outage every request fails (503 / connection refused, no Retry-After);
  afterwards every request succeeds, so a report is done at its first try after it;
- crashd: the *n*-th failure of a report waits ``Backoff().delay(n, random)``;
- whoopsie: a failed report waits for its device's next rescan (every 2 h, each
  device at its own random phase), where it is tried again.

Reports outside the outage succeed at once (one request each), so only the outage's
reports need stepping through; that keeps 100,000 devices well under a second.
Deterministic: fixed seeds. ``python -m bench.fleet [--devices N] [--plot PATH]``.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from crashd.policy import Backoff

HOUR = 3600.0
REPORTS_PER_DAY = 4.0  # per device
RESCAN = 2 * HOUR  # whoopsie's PROCESS_OUTSTANDING_TIMEOUT
BEFORE, AFTER = 1 * HOUR, 8 * HOUR  # the window shown around the outage
SEED = 20240601
# The policies compared: whoopsie, crashd as shipped, and candidate settings for the lead.
CRASHD: dict[str, Backoff] = {
    "crashd": Backoff(),  # server failures: server_base 2 h
    "crashd one 60s base": Backoff(server_base=60.0),  # DESIGN.md's first draft: 60 s for every failure
    "crashd server_base=30min": Backoff(server_base=1800.0),
}


@dataclass(frozen=True)
class Outcome:
    """What one policy did: every request's time, and when each outage report got through."""

    name: str
    requests: np.ndarray  # times of all requests (failed and successful)
    delivered: np.ndarray  # delivery time of each report written during the outage
    failed: int  # requests that hit the dead server: the wasted ones


def arrivals(devices: int, outage: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Report times and their devices over the whole window, sorted by time.

    A superposition of per-device Poisson processes is one Poisson process whose events
    land on uniformly chosen devices; drawing it that way is exact and vectorised.
    """
    span = BEFORE + outage + AFTER
    count = rng.poisson(devices * REPORTS_PER_DAY / 86400.0 * span)
    times = np.sort(rng.uniform(-BEFORE, outage + AFTER, count))
    return times, rng.integers(0, devices, count)


def crashd(name: str, backoff: Backoff, times: np.ndarray, outage: float) -> Outcome:
    """Each outage report retries on its own after ``backoff.delay(attempts, random)``."""
    draw: Callable[[], float] = random.Random(SEED).random
    requests: list[float] = []
    delivered: list[float] = []
    for t in times[(times >= 0) & (times < outage)].tolist():
        attempts = 0
        while t < outage:
            requests.append(t)
            attempts += 1
            t += backoff.delay(attempts, draw)
        requests.append(t)
        delivered.append(t)
    failed = len(requests) - len(delivered)
    return _finish(name, times, outage, np.array(requests), np.array(delivered), failed)


def whoopsie(times: np.ndarray, device: np.ndarray, phase: np.ndarray, outage: float) -> Outcome:
    """Each outage report is tried on arrival, then at every rescan of its device until one succeeds."""
    during = (times >= 0) & (times < outage)
    t, ph = times[during], phase[device[during]]
    scan = ph + (np.floor((t - ph) / RESCAN) + 1) * RESCAN  # first rescan after writing
    tries = [t]
    while (pending := scan < outage).any():  # failed rescans, one round of 2 h at a time
        tries.append(scan[pending])
        scan = np.where(pending, scan + RESCAN, scan)
    failed = sum(len(x) for x in tries)
    return _finish("whoopsie", times, outage, np.concatenate([*tries, scan]), scan, failed)


def _finish(
    name: str, times: np.ndarray, outage: float, requests: np.ndarray, delivered: np.ndarray, failed: int
) -> Outcome:
    """Add the one request of every report written while the server was up."""
    up = times[(times < 0) | (times >= outage)]
    return Outcome(name, np.sort(np.concatenate([up, requests])), delivered, failed)


def per_minute(requests: np.ndarray, outage: float) -> tuple[np.ndarray, np.ndarray]:
    """Requests in each minute of the window; returns (minute starts in hours, counts)."""
    edges = np.arange(-BEFORE, outage + AFTER + 1, 60.0)
    counts, _ = np.histogram(requests, edges)
    return edges[:-1] / HOUR, counts


def summarise(result: Outcome, outage: float) -> dict[str, float]:
    """The figures the issue asks for: steady rate, peak after recovery, drain time, requests."""
    hours, counts = per_minute(result.requests, outage)
    steady = counts[hours < 0].mean()
    peak = counts[hours >= outage / HOUR].max()
    drain = result.delivered - outage
    return {
        "steady_per_min": float(steady),
        "peak_after_per_min": float(peak),
        "peak_ratio": float(peak / steady),
        "peak_during_per_min": float(counts[(hours >= 0) & (hours < outage / HOUR)].max()),
        "drain_p99_min": float(np.percentile(drain, 99) / 60),
        "drain_all_min": float(drain.max() / 60),
        "outage_reports": len(result.delivered),
        "outage_requests": len(result.delivered) + result.failed,
        "wasted_requests": result.failed,
    }


def simulate(devices: int, outage: float) -> list[Outcome]:
    """Every policy against the same reports and the same device phases."""
    rng = np.random.default_rng(SEED)
    times, device = arrivals(devices, outage, rng)
    phase = rng.uniform(0, RESCAN, devices)
    results = [whoopsie(times, device, phase, outage)]
    results += [crashd(name, backoff, times, outage) for name, backoff in CRASHD.items()]
    return results


def plot(results: Sequence[Outcome], outage: float, steady: float, path: str) -> None:
    """Requests/minute for each policy, the outage shaded, a dashed line at 2x steady state."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'crashd[bench]')", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    ax.axvspan(0, outage / HOUR, color="0.85", label="server down")
    styles = {"whoopsie": ("tab:orange", 1.8), "crashd": ("tab:blue", 1.8)}
    spare = iter(["tab:green", "tab:purple", "tab:brown", "tab:olive"])  # the candidate settings
    for result in results:
        colour, width = styles.get(result.name) or (next(spare, None), 0.9)
        hours, counts = per_minute(result.requests, outage)
        top = 3 if result.name in styles else 2  # the two compared drawn over the candidates
        ax.plot(hours, counts, lw=width, color=colour, label=result.name, drawstyle="steps-post", zorder=top)
    ax.axhline(2 * steady, ls="--", color="k", lw=1, label=f"2x steady state ({2 * steady:.0f}/min)")
    ax.set(xlabel="hours since the outage began", ylabel="requests per minute (failed + sent)")
    ax.set_title(f"{len(results[0].delivered):,} reports written during a {outage / HOUR:g} h outage")
    ax.set_xlim(-BEFORE / HOUR, (outage + AFTER) / HOUR)
    ax.set_xticks(np.arange(-BEFORE / HOUR, (outage + AFTER) / HOUR + 1))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"plot written to {path}")


def figures(
    devices: int = 100_000, outage_hours: float = 1.0, plot_path: str | None = None
) -> dict[str, dict]:
    """Simulate, print the summary table, optionally plot; returns the figures per policy."""
    outage = outage_hours * HOUR
    results = simulate(devices, outage)
    figures = {r.name: summarise(r, outage) for r in results}
    steady = figures["crashd"]["steady_per_min"]
    print(
        f"fleet: {devices:,} devices x {REPORTS_PER_DAY:g} reports/day = {steady:.0f} requests/min steady; "
        f"{outage_hours:g} h outage; goal: peak after recovery ≤ 2x steady"
    )
    print(f"{'policy':<20}{'peak after':>11}{'/steady':>9}{'peak during':>12}{'drain 99%':>11}", end="")
    print(f"{'drain all':>11}{'requests':>12}{'wasted':>12}")
    for name, f in figures.items():
        print(
            f"{name:<20}{f['peak_after_per_min']:>7.0f}/min{f['peak_ratio']:>8.2f}x"
            f"{f['peak_during_per_min']:>8.0f}/min{f['drain_p99_min']:>7.0f} min{f['drain_all_min']:>7.0f} min"
            f"{f['outage_requests']:>12,}{f['wasted_requests']:>12,}"
        )
    reports = figures["crashd"]["outage_reports"]
    print(f"(requests, wasted: for the {reports:,} reports written during the outage)")
    if plot_path:
        plot(results, outage, steady, plot_path)
    return figures


def run(quick: bool) -> dict[str, dict]:
    """For ``python -m bench``: the figures, without redrawing the committed plot."""
    return figures(10_000 if quick else 100_000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--outage", type=float, default=1.0, metavar="HOURS")
    parser.add_argument("--plot", metavar="PATH", help="write the requests/minute chart (needs matplotlib)")
    parser.add_argument("--quick", action="store_true", help="10,000 devices (the ratios do not change)")
    args = parser.parse_args(argv)
    if args.devices < 1 or not math.isfinite(args.outage) or args.outage <= 0:
        parser.error("--devices must be ≥ 1 and --outage > 0")
    figures(10_000 if args.quick else args.devices, args.outage, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
