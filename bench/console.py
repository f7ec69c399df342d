"""The console's cost: time to first paint of the pipeline page on loopback, and the
gateway's CPU with five console pages open, streaming Server-Sent Events.

One `edge-stream run` process takes a steady --rate msg/s from Mosquitto (one MQTT
source, three routes, three file sinks), so that every status document differs from
the one before and each open page is sent one a second. Debian's chromium, headless,
driven by Selenium (chromium-driver), on the open console (localhost, no accounts):

  first paint    a fresh load of /#pipeline, --loads times: the browser's
                 first-contentful-paint, and the moment the graph's nodes are drawn
                 (the first status document arrived and was rendered); medians
  five pages     the gateway's CPU seconds (utime + stime of /proc/PID/stat) over
                 --seconds with no page open, then with five pages open on #pipeline
                 (five windows, each visible, each with its own event stream)

Usage: python bench/console.py [--rate 200] [--loads 7] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, only bench/ is on the path: the repository comes first, so that `tests`
# is this project's package, whatever `tests` package an installed library may ship.
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402

from tests import servers  # noqa: E402
from tests.e2e.harness import GatewayProcess, wait_for  # noqa: E402

DRAWN = """
const done = arguments[arguments.length - 1];
const check = () => document.querySelector("#graph .node") ?
  done(performance.now()) : requestAnimationFrame(check);
check();
"""
FCP = """
const e = performance.getEntriesByName("first-contentful-paint");
return e.length ? e[0].startTime : null;
"""


class Steady(threading.Thread):
    def __init__(self, port: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.port, self.rate = port, rate
        self.stopping = threading.Event()

    def run(self) -> None:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="console-bench")
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        started, sent = time.monotonic(), 0
        while not self.stopping.is_set():
            client.publish(f"bench/line{sent % 3}/t", json.dumps({"n": sent}), qos=0)
            sent += 1
            ahead = sent / self.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        client.disconnect()
        client.loop_stop()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def browser(profile: Path) -> webdriver.Chrome:
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--loads", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    workspace = servers.Workspace()
    folder = Path(tempfile.mkdtemp(prefix="console-bench-"))
    gw = None
    driver = None
    try:
        broker = workspace.mosquitto()
        config = {
            "mqtt": {"url": broker.url},
            "sources": {"plant": {"type": "mqtt", "topics": ["bench/#"], "qos": 0}},
            "routes": {
                f"line{i}": {"match": f"bench/line{i}/#", "sinks": [f"file{i}"]} for i in range(3)
            },
            "sinks": {f"file{i}": {"type": "file", "path": f"line{i}.jsonl"} for i in range(3)},
        }
        gw = GatewayProcess(folder, config)
        gw.start()
        assert gw.proc is not None
        pid = gw.proc.pid
        url = f"http://127.0.0.1:{gw.web_port}/#pipeline"
        steady = Steady(broker.port, args.rate)
        steady.start()
        driver = browser(folder / "profile")
        fcp, drawn = [], []
        for _ in range(args.loads):
            driver.get("about:blank")
            driver.get(url)
            drawn.append(driver.execute_async_script(DRAWN))
            fcp.append(wait_for(lambda: driver.execute_script(FCP), 10, "first paint"))
        time.sleep(2)
        idle_from = cpu_seconds(pid)
        time.sleep(args.seconds)
        idle = cpu_seconds(pid) - idle_from
        driver.get(url)  # five pages: this window and four more
        for _ in range(4):
            driver.switch_to.new_window("window")
            driver.get(url)
        for handle in driver.window_handles:
            driver.switch_to.window(handle)
            wait_for(lambda: driver.execute_script(
                "return document.visibilityState === 'visible' &&"
                " !!document.querySelector('#graph .node')"), 10, "a live page")  # fmt: skip
        time.sleep(2)
        open_from = cpu_seconds(pid)
        time.sleep(args.seconds)
        opened = cpu_seconds(pid) - open_from
        steady.stopping.set()
        rss = gw.rss_mb()
        print(
            f"console bench: {args.rate:.0f} msg/s through the gateway, loopback, headless chromium"
        )
        print(f"  pipeline page, first contentful paint: median {statistics.median(fcp):.0f} ms"
              f" (min {min(fcp):.0f}, max {max(fcp):.0f}, {len(fcp)} loads)")  # fmt: skip
        print(
            f"  pipeline page, graph drawn (first status rendered): median"
            f" {statistics.median(drawn):.0f} ms (min {min(drawn):.0f}, max {max(drawn):.0f})"
        )
        share = lambda cpu: 100 * cpu / args.seconds  # noqa: E731
        print(f"  gateway CPU, no page open: {share(idle):.1f}% of a core")
        print(f"  gateway CPU, five pages streaming: {share(opened):.1f}% of a core"
              f" (+{share(opened - idle):.1f} points for the five pages)")  # fmt: skip
        print(f"  gateway RSS after: {rss:.0f} MiB")
        return 0
    finally:
        if driver is not None:
            driver.quit()
        if gw is not None:
            gw.stop()
            gw.close()
        workspace.close()


if __name__ == "__main__":
    sys.exit(main())
