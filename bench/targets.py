"""Every target of issue 15 with its figure, met or missed, and the machine's yardstick.

Runs the pieces the other benches measure, each on fresh servers, and prints a table at
the end (`make bench-targets`; `make bench` runs it last):
  - bench/spine.py: MQTT QoS 1 -> store -> PostgreSQL from 4 `mosquitto_pub` (the
    median of --repeat runs: one run's figure may be a third off on this machine), the
    gateway's CPU per 10k messages, its RSS idle (console on) and peak, publish -> row
    latency at a paced 1,000 and 10,000 msg/s;
  - bench/spine.py --pin: the same load with the gateway alone on one CPU (`taskset -c 1`),
    broker, database and publishers on the other;
  - bench/compare.py: Edge Stream and Node-RED's batched flow in one run, one pair;
  - bench/modbus.py: 10 devices x 100 registers at 10 ms polls through a real gateway
    into PostgreSQL, every poll answered arriving as one row, CPU per 10k values.
The yardstick with each figure is the load average and how long sum(range(1000)) takes
in Python at the end of that piece (about 14 µs on the project's machine when quiet): a
figure taken at load 6 and 40 µs says more about the machine than about the gateway.
"No regression anywhere else" is what the other benches of `make bench` print.

Usage: python bench/targets.py [--messages 200000] [--latency-seconds 20] [--repeat 3]
                               [--modbus-seconds 20] [--pin 1] [--skip-compare]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, only bench/ is on the path: the repository comes first, so that `tests`
# is this project's package, whatever `tests` package an installed library may ship.
sys.path.insert(0, str(ROOT))

from bench import compare, modbus, spine  # noqa: E402
from tests import servers  # noqa: E402

Row = tuple[str, str, str, bool | None, str]  # target, wanted, figure, met, yardstick


def spine_rows(r: dict[str, Any]) -> list[Row]:
    tp, y = r["throughput"], r["yardstick"]
    rows: list[Row] = [
        (
            "MQTT QoS 1 -> PostgreSQL, 4 publishers",
            f">= {spine.TARGET_MSGS_PER_S:,} msg/s",
            f"{tp['msgs_per_s']:,.0f} msg/s",
            tp["msgs_per_s"] >= spine.TARGET_MSGS_PER_S,
            y,
        ),
        (
            "gateway CPU per 10k messages",
            f"<= {spine.TARGET_CPU_PER_10K} CPU-s",
            f"{tp['cpu_s_per_10k']:.2f} CPU-s",
            tp["cpu_s_per_10k"] <= spine.TARGET_CPU_PER_10K,
            y,
        ),
        (
            "RSS idle, console on",
            f"<= {spine.TARGET_IDLE_MB} MB",
            f"{r['idle_mb']:.1f} MB",
            r["idle_mb"] <= spine.TARGET_IDLE_MB,
            y,
        ),
        (
            "RSS peak at full load",
            f"<= {spine.TARGET_PEAK_MB} MB",
            f"{r['peak_mb']:.1f} MB",
            r["peak_mb"] <= spine.TARGET_PEAK_MB,
            y,
        ),
    ]
    for lat in r["latency"]:
        target = spine.TARGET_P99_MS[lat["rate"]]
        rows.append(
            (
                f"publish -> row p99 at {lat['rate']:,} msg/s",
                f"<= {target:.0f} ms",
                f"{lat['p99_ms']:.1f} ms (in the gateway {lat['gateway_p99_ms']:.1f})",
                lat["p99_ms"] <= target,
                y,
            )
        )
    return rows


def pinned_rows(r: dict[str, Any], cpu: int) -> list[Row]:
    tp = r["throughput"]
    return [
        (
            f"gateway pinned to CPU {cpu}, the rest on the other",
            f">= {spine.TARGET_PINNED_MSGS_PER_S:,} msg/s",
            f"{tp['msgs_per_s']:,.0f} msg/s ({tp['cpu_s_per_10k']:.2f} CPU-s/10k)",
            tp["msgs_per_s"] >= spine.TARGET_PINNED_MSGS_PER_S,
            r["yardstick"],
        )
    ]


def compare_rows(messages: int, publishers: int) -> list[Row]:
    args = argparse.Namespace(
        messages=messages, publishers=publishers, flow="join", batch=100, cache=compare.CACHE
    )
    compare.install_node_red(args.cache)
    workspace = servers.Workspace()
    try:
        mq = workspace.mosquitto()
        pg = workspace.postgres()
        es = compare.run_edge_stream(mq, pg, "tgt_es", args)
        print(compare.line("Edge Stream", es), flush=True)
        nr = compare.run_node_red(mq, pg, "tgt_nr", args)
        print(compare.line("Node-RED", nr), flush=True)
    finally:
        workspace.close()
    ratio = es["msgs_per_s"] / nr["msgs_per_s"]
    return [
        (
            "Edge Stream / Node-RED batched, one run",
            ">= 2.0x",
            f"{ratio:.2f}x ({es['msgs_per_s']:,.0f} / {nr['msgs_per_s']:,.0f} msg/s)",
            ratio >= 2,
            spine.yardstick(),
        )
    ]


def modbus_rows(r: dict[str, Any]) -> list[Row]:
    per10k = r["cpu_s_per_10k_values"]
    return [
        (
            "Modbus 10 x 100 regs at 10 ms: every poll forwarded",
            "rows = polls answered",
            f"{r['rows']:,} rows / {r['polls']:,} polls"
            f" ({100 * r['window_polls'] / r['grid_polls']:.0f}% of the 10 ms grid polled)",
            r["rows"] == r["polls"],
            r["yardstick"],
        ),
        (
            "Modbus gateway CPU per 10k values",
            f"<= {modbus.TARGET_CPU_PER_10K_VALUES} CPU-s",
            f"{per10k:.3f} CPU-s",
            per10k <= modbus.TARGET_CPU_PER_10K_VALUES,
            r["yardstick"],
        ),
    ]


def table(rows: list[Row]) -> None:
    heads = ("target", "wanted", "figure", "", "yardstick")
    cells = [
        (t, w, f, "met" if m else "MISSED" if m is False else "-", y) for t, w, f, m, y in rows
    ]
    widths = [max(len(c[i]) for c in [heads, *cells]) for i in range(4)]
    for c in [heads, *cells]:
        print("  ".join(c[i].ljust(widths[i]) for i in range(4)) + "  " + c[4])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=200_000, help="spine runs (200000)")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--latency-seconds", type=int, default=20)
    parser.add_argument(
        "--repeat", type=int, default=3, help="spine throughput runs, the median counts (3)"
    )
    parser.add_argument("--modbus-seconds", type=float, default=20.0)
    parser.add_argument("--compare-messages", type=int, default=50_000)
    parser.add_argument("--pin", type=int, default=1, help="the pinned gateway's CPU (1)")
    parser.add_argument("--skip-compare", action="store_true", help="no Node-RED (needs npm)")
    args = parser.parse_args()
    rows: list[Row] = []
    pieces: list[tuple[str, Callable[[], list[Row]]]] = [
        ("spine: MQTT (QoS 1) -> gateway -> PostgreSQL", lambda: spine_rows(spine_piece(args))),
        (
            f"spine, the gateway pinned to CPU {args.pin}",
            lambda: pinned_rows(pinned(args), args.pin),
        ),
        ("Modbus TCP through the gateway", lambda: modbus_rows(modbus_piece(args))),
    ]
    if not args.skip_compare:
        pieces.append(
            (
                "Edge Stream against Node-RED's batched flow",
                lambda: compare_rows(args.compare_messages, args.publishers),
            )
        )
    for title, piece in pieces:
        print(f"\n== {title} ==", flush=True)
        rows += piece()
    print("\n== issue 15 targets (2-core machine, everything local) ==")
    print("yardstick: the 1-minute load average and µs for sum(range(1000)) after each piece")
    table(rows)
    missed = sum(1 for row in rows if row[3] is False)
    print(f"{len(rows) - missed} of {len(rows)} met; no regression elsewhere: the other benches")
    return 0


def spine_piece(args: argparse.Namespace) -> dict[str, Any]:
    r = spine.measure(
        args.messages, args.publishers, (1000, 10_000), args.latency_seconds, repeat=args.repeat
    )
    spine.report(r)
    return r


def pinned(args: argparse.Namespace) -> dict[str, Any]:
    r = spine.measure(
        args.messages, args.publishers, (), args.latency_seconds, pin=args.pin, repeat=args.repeat
    )
    spine.report(r)
    return r


def modbus_piece(args: argparse.Namespace) -> dict[str, Any]:
    r = modbus.gateway_run(args.modbus_seconds)
    modbus.report_gateway(r)
    return r


if __name__ == "__main__":
    sys.exit(main())
