"""The console in a real browser: Debian's chromium, headless, driven by Selenium through
chromium-driver, against the real `edge-stream` process, Mosquitto and PostgreSQL.

A technician logs in, sees the pipeline graph and a sink's delivered count rise while
messages come, finds a new topic in the topic tree, routes it to PostgreSQL through the
route editor (show before apply, then apply) and sees the rows arrive, opens a dead
letter and replays it. Topics and payloads with markup stay text; binary ones show as hex.
Screenshots go to the test's folder (and, with EDGE_STREAM_SCREENSHOTS=DIR, to DIR: how
docs/images/ is made).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as paho
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from tests.e2e.harness import wait_for

pytestmark = pytest.mark.e2e

USER, PASSWORD = "tech", "browser-pass-1"
SECRET = "pg-secret-93"
MARKUP = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2>"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
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
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


class Publisher:
    """One paho client for the test's messages (QoS 1, each waited for)."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=f"ui-{uuid.uuid4().hex}"
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes | str, count: int = 1) -> None:
        for _ in range(count):
            self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def shot(driver: WebDriver, folder: Path, name: str) -> None:
    driver.save_screenshot(str(folder / f"{name}.png"))
    extra = os.environ.get("EDGE_STREAM_SCREENSHOTS")
    if extra:
        shutil.copy(folder / f"{name}.png", Path(extra) / f"console-{name}.png")


def find(driver: WebDriver, css: str, timeout: float = 15) -> WebElement:
    return wait_for(  # type: ignore[no-any-return]
        lambda: next(iter(driver.find_elements(By.CSS_SELECTOR, css)), None), timeout, css
    )


def text(driver: WebDriver, css: str) -> str:
    """The first match's text; the page redraws as data streams in, so an element found
    may be replaced before its text is read: then look it up again."""
    for _ in range(5):
        found = driver.find_elements(By.CSS_SELECTOR, css)
        try:
            return found[0].text if found else ""
        except StaleElementReferenceException:
            continue
    return ""


def row(driver: WebDriver, tbody: str, key: str) -> WebElement | None:
    for tr in driver.find_elements(By.CSS_SELECTOR, f"#{tbody} tr"):
        try:
            if tr.get_attribute("data-key") == key:
                return tr
        except StaleElementReferenceException:  # redrawn meanwhile: the caller polls again
            return None
    return None


def delivered(driver: WebDriver, sink: str) -> int:
    label = text(driver, f'[data-state="sink {sink}"]')  # "running · 12 delivered"
    return int(label.split("·")[1].split()[0]) if "·" in label else -1


def rows_in(postgres: Any, table: str) -> int:
    try:
        return int(postgres.fetch(f"SELECT count(*) FROM {table}")[0][0])
    except asyncpg.UndefinedTableError:  # the sink makes it on its first write
        return 0


def submit_login(browser: WebDriver, user: str, password: str) -> None:
    """Fill in the login page's form and send it."""
    find(browser, "#username").send_keys(user)
    browser.find_element(By.ID, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()


def strict_json_to_archive(gateway_factory: Any, mosquitto: Any, name: str) -> Any:
    """A started gateway taking `name`/# through a json processor (what is not JSON goes
    to the dead letters) into a file sink `archive`."""
    gw = gateway_factory({
        "mqtt": {"url": mosquitto.url},
        "sources": {"plant": {"type": "mqtt", "topics": [f"{name}/#"], "qos": 1,
                              "client_id": f"gw-{name}"}},
        "routes": {"strict": {"match": f"{name}/#", "processors": [{"type": "json"}],
                              "sinks": ["archive"]}},
        "sinks": {"archive": {"type": "file", "path": "archive.jsonl"}},
    })  # fmt: skip
    gw.start()
    return gw


def plant_lines_to_archive(gateway_factory: Any, mosquitto: Any, **more: Any) -> Any:
    """A started gateway with one route, `lines` (plant/#), into a file sink `archive`."""
    gw = gateway_factory({
        "mqtt": {"url": mosquitto.url},
        "routes": {"lines": {"match": "plant/#", "sinks": ["archive"]}},
        "sinks": {"archive": {"type": "file", "path": "archive.jsonl"}},
        **more,
    })  # fmt: skip
    gw.start(wait_sources=False)
    return gw


def test_a_technician_wires_a_topic_to_postgres_from_the_browser(
    mosquitto: Any, postgres: Any, gateway_factory: Any, browser: WebDriver, tmp_path: Path
) -> None:
    name = f"ui{uuid.uuid4().hex[:8]}"
    table = f"{name}_readings"
    # a password the server does not ask for (trust), which the console must not show
    dsn = postgres.dsn.replace("postgres@", f"postgres:{SECRET}@")
    assert SECRET in dsn
    gw = gateway_factory({
        "mqtt": {"url": mosquitto.url},
        "sources": {
            "plant": {"type": "mqtt", "topics": [f"{name}/#"], "qos": 1, "client_id": f"gw-{name}"}
        },
        "routes": {
            "lines": {"match": f"{name}/line/+", "sinks": ["archive"]},
            "strict": {"match": f"{name}/bad/#", "processors": [{"type": "json"}],
                       "sinks": ["archive"]},
        },
        "sinks": {
            "archive": {"type": "file", "path": "archive.jsonl"},
            "warehouse": {"type": "postgres", "dsn": dsn, "table": table},
        },
        "web": {"username": USER, "password": PASSWORD},
    })  # fmt: skip
    gw.start(wait_sources=False)
    base = f"http://127.0.0.1:{gw.web_port}"
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def status() -> dict[str, Any]:
        request = urllib.request.Request(f"{base}/api/status", headers={"Authorization": auth})
        with urllib.request.urlopen(request, timeout=5) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]

    wait_for(lambda: status()["sources"]["plant"]["state"] == "running", 30, "plant running")
    pub = Publisher(mosquitto.port)
    try:
        # log in
        browser.get(f"{base}/")
        wait_for(lambda: browser.current_url.endswith("/login"), 10, "the login page")
        submit_login(browser, USER, PASSWORD)
        wait_for(lambda: text(browser, "#verdict") == "All flowing", 15, "the verdict")
        assert text(browser, "#who") == f"{USER} (operator)"
        assert name not in text(browser, "#facts") and "e2e" in text(browser, "#facts")

        # the pipeline graph; the delivered count rises while messages come
        browser.get(f"{base}/#pipeline")
        find(browser, 'g.node[data-node="sink warehouse"]')
        for node in ("source plant", "route lines", "route strict", "sink archive"):
            find(browser, f'g.node[data-node="{node}"]')
        assert browser.find_elements(By.CSS_SELECTOR, "#graph path.edge")
        wait_for(lambda: delivered(browser, "archive") == 0, 10, "archive at 0 delivered")
        # a node keeps the keyboard focus while the counts change (the graph is not redrawn)
        focused = browser.find_element(By.CSS_SELECTOR, 'g.node[data-node="route lines"]')
        browser.execute_script("arguments[0].focus()", focused)
        sender = threading.Thread(target=pub.send, args=(f"{name}/line/1", '{"t": 20.5}', 30))
        sender.start()
        seen = {0}
        wait_for(
            lambda: seen.add(delivered(browser, "archive")) or max(seen) >= 30, 20, "30 delivered"
        )
        sender.join()
        assert len(seen) >= 2, f"the count was shown as it rose, not only at the end: {seen}"
        assert browser.execute_script("return document.activeElement === arguments[0]", focused)
        focused.send_keys(Keys.ENTER)  # the keyboard opens a node as a click does
        wait_for(lambda: text(browser, "#node-title") == "route lines", 10, "the route's panel")
        assert "/s" in text(browser, "[data-rate='emitted lines']")
        browser.find_element(By.CSS_SELECTOR, 'g.node[data-node="sink warehouse"]').click()
        wait_for(lambda: '"table"' in text(browser, "#node-config"), 10, "the sink's config")
        assert table in text(browser, "#node-config")
        assert SECRET not in browser.page_source and "postgres:***@" in browser.page_source
        shot(browser, tmp_path, "pipeline")

        # a new topic in the tree, with markup and binary payloads beside it
        evil_topic = f"{name}/x/{MARKUP}"
        pub.send(f"{name}/new/temp", '{"t": 7}', 3)
        pub.send(evil_topic, MARKUP)
        pub.send(f"{name}/bin", b"\x00\xff\x10")
        browser.get(f"{base}/#topics")
        new_row = wait_for(lambda: row(browser, "topics", f"topic {name}/new/temp"), 15, "the row")
        assert "no route" in new_row.text
        evil_row = wait_for(lambda: row(browser, "topics", f"topic {evil_topic}"), 15, "markup")
        assert MARKUP in evil_row.text  # the topic's last level and the payload, as text
        bin_row = wait_for(lambda: row(browser, "topics", f"topic {name}/bin"), 15, "binary")
        assert "hex 00 ff 10" in bin_row.text
        browser.find_element(By.ID, "match-topic").send_keys(f"{name}/line/7")
        browser.find_element(By.CSS_SELECTOR, "#match-form button").click()
        wait_for(lambda: "goes to: lines" in text(browser, "#match-result"), 10, "match box")

        # route it to PostgreSQL: show before apply, then apply
        new_row = row(browser, "topics", f"topic {name}/new/temp")
        assert new_row is not None
        new_row.find_element(By.TAG_NAME, "button").click()
        wait_for(lambda: browser.find_element(By.ID, "route-match").get_attribute("value")
                 == f"{name}/new/temp", 10, "the editor, filled in")  # fmt: skip
        route = browser.find_element(By.ID, "route-name").get_attribute("value")
        assert route == f"route_{name}_new_temp"
        browser.find_element(By.ID, "check").click()  # no sink chosen: refused inline
        wait_for(lambda: f"routes.{route}" in text(browser, "#route-errors"), 10, "the error")
        assert "sink" in text(browser, "#route-sinks .field-error")  # next to the field it names
        assert browser.find_element(By.ID, "apply").get_attribute("disabled") is not None
        browser.find_element(By.CSS_SELECTOR, "#route-sinks input[value=warehouse]").click()
        browser.find_element(By.ID, "add-processor").click()
        browser.find_element(By.ID, "check").click()
        wait_for(lambda: f"routes.{route}: added" in text(browser, "#route-changes"), 10, "diff")
        assert "+    - warehouse" in text(browser, "#route-diff")
        assert text(browser, "#route-errors") == ""
        browser.set_window_size(1280, 1500)
        browser.execute_script("document.getElementById('route-form').scrollIntoView()")
        shot(browser, tmp_path, "route-editor")
        browser.set_window_size(1280, 900)
        browser.find_element(By.ID, "apply").click()
        wait_for(lambda: text(browser, "#route-outcome").startswith("Applied"), 20, "applied")
        assert f"route {route}" in text(browser, "#route-outcome")  # what restarted
        assert f"{route}:" in gw.config_path.read_text()
        pub.send(f"{name}/new/temp", '{"t": 8}', 5)
        wait_for(lambda: rows_in(postgres, table) == 5, 30, "5 rows in PostgreSQL")
        # the replaced text is kept; rolling back to it removes the route, from the form too
        find(browser, "#versions tr[data-key] button").click()
        browser.switch_to.alert.accept()
        wait_for(lambda: text(browser, "#route-outcome").startswith("Rolled back"), 20, "undone")
        assert browser.find_element(By.ID, "route-name").get_attribute("value") == ""
        assert row(browser, "route-list", route) is None and row(browser, "route-list", "lines")

        # a dead letter: opened (text, not markup) and replayed
        pub.send(f"{name}/bad/{MARKUP}", f"not json {MARKUP}")
        browser.get(f"{base}/#dead")
        dead = wait_for(
            lambda: next((r for r in browser.find_elements(By.CSS_SELECTOR, "#dead tr[data-key]")),
                         None), 20, "a dead letter")  # fmt: skip
        seq = dead.get_attribute("data-key")
        assert MARKUP in dead.text
        dead.find_element(By.TAG_NAME, "button").click()
        wait_for(lambda: text(browser, "#dead-content") == f"not json {MARKUP}", 10, "content")
        browser.find_element(By.ID, "dead-replay").click()
        wait_for(lambda: text(browser, "#dead-outcome").startswith("Replayed 1"), 10, "replay")
        # the gateway took it in again: its route refuses it again, as a new dead letter
        wait_for(lambda: row(browser, "dead", seq) is None and
                 browser.find_elements(By.CSS_SELECTOR, "#dead tr[data-key]"), 20,
                 "the replayed letter, dead-lettered anew")  # fmt: skip
        browser.find_element(By.ID, "dead-purge-all").click()  # said where it can be seen
        browser.switch_to.alert.accept()
        wait_for(lambda: text(browser, "#dead-all-outcome").startswith("Purged"), 10, "purged")

        # readable at 360 px: no page is wider than the phone (tables scroll in their box)
        browser.set_window_size(360, 740)
        for page in ("overview", "pipeline", "topics", "editor", "sinks", "dead"):
            browser.get(f"{base}/#{page}")
            find(browser, f"#page-{page}:not([hidden])")
            wide = browser.execute_script("return document.documentElement.scrollWidth")
            assert wide <= browser.execute_script("return window.innerWidth"), page
        shot(browser, tmp_path, "phone-overview")
        # ... nor when a check shows a long topic filter (a JSON list, without a space)
        browser.get(f"{base}/#editor?route=lines")
        find(browser, "#route-match").send_keys("\n" + f"{name}/" + "long-level/" * 12 + "#")
        browser.find_element(By.ID, "check").click()
        wait_for(lambda: "routes.lines: changed" in text(browser, "#route-changes"), 10, "diff")
        wide = browser.execute_script("return document.documentElement.scrollWidth")
        assert wide <= browser.execute_script("return window.innerWidth"), "the checked edit"

        # nothing from outside ran as script
        assert browser.execute_script("return window.pwned === undefined")
        assert len(browser.find_elements(By.TAG_NAME, "script")) == 2  # words.js, console.js
        assert not browser.find_elements(By.CSS_SELECTOR, "main img")
    finally:
        pub.close()
    assert gw.stop() == 0


def test_a_viewer_reads_every_page_but_cannot_edit(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver, tmp_path: Path
) -> None:
    name = f"uiv{uuid.uuid4().hex[:8]}"
    gw = gateway_factory({
        "mqtt": {"url": mosquitto.url},
        "sources": {"plant": {"type": "mqtt", "topics": [f"{name}/#"], "client_id": f"gw-{name}"}},
        "routes": {"lines": {"match": f"{name}/#", "processors": [{"type": "json"}],
                             "sinks": ["archive"]}},
        "sinks": {"archive": {"type": "file", "path": "archive.jsonl"}},
    })  # fmt: skip
    added = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "web", "passwd", "vic", "-c", str(gw.config_path)],
        input="viewer-pass-1\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    gw.start(wait_sources=False)
    base = f"http://127.0.0.1:{gw.web_port}"
    browser.get(f"{base}/login")
    submit_login(browser, "vic", "viewer-pass-1")
    wait_for(lambda: text(browser, "#who") == "vic (viewer)", 15, "logged in as a viewer")
    browser.get(f"{base}/#editor?route=lines")
    wait_for(lambda: browser.find_element(By.ID, "route-match").get_attribute("value")
             == f"{name}/#", 10, "the route, shown")  # fmt: skip
    assert "viewer" in text(browser, "#page-editor .viewer-note")
    for control in ("check", "apply", "remove-route", "add-processor"):
        button = browser.find_element(By.ID, control)
        assert button.get_attribute("disabled") is not None, control
    moves = browser.find_elements(By.CSS_SELECTOR, "#processors button")  # Up, Down, Remove
    assert len(moves) == 3 and all(b.get_attribute("disabled") is not None for b in moves)
    assert "Needs an operator" in (
        browser.find_element(By.ID, "check").get_attribute("title") or ""
    )
    browser.get(f"{base}/#dead")
    find(browser, "#page-dead:not([hidden])")
    assert browser.find_element(By.ID, "dead-replay-all").get_attribute("disabled") is not None
    assert browser.find_element(By.ID, "dead-purge-all").get_attribute("disabled") is not None
    # Route this topic is off too, which a disabled button cannot say to the keyboard
    # (it takes no focus, nor shows its title): the page says it, as the editor's does
    browser.get(f"{base}/#topics")
    find(browser, "#page-topics:not([hidden])")
    assert "routing a topic needs an operator" in text(browser, "#page-topics .viewer-note")
    browser.get(f"{base}/#pipeline")
    find(browser, 'g.node[data-node="sink archive"]')  # reading works
    assert gw.stop() == 0


def test_a_route_name_error_is_shown_beside_the_name_field(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # Errors about a route's name were listed but not placed beside the Name field, as
    # the errors of the other fields are.
    gw = plant_lines_to_archive(gateway_factory, mosquitto)
    browser.get(f"http://127.0.0.1:{gw.web_port}/#editor")  # no account: open on localhost
    wait_for(lambda: row(browser, "route-list", "lines"), 15, "the route list")
    name = browser.find_element(By.ID, "route-name")

    def beside_name() -> str:
        return text(browser, "#route-name + .field-error")

    # refused by the gateway's check: `routes.bad name: names use letters, ...`
    name.send_keys("bad name")
    browser.find_element(By.ID, "route-match").send_keys("plant/x")
    browser.find_element(By.CSS_SELECTOR, "#route-sinks input[value=archive]").click()
    browser.find_element(By.ID, "check").click()
    wait_for(lambda: "names use letters" in beside_name(), 10, "the name's error beside it")
    assert "routes.bad name" in text(browser, "#route-errors")
    assert name.get_attribute("aria-invalid") == "true"
    note = browser.find_element(By.CSS_SELECTOR, "#route-name + .field-error")
    assert name.get_attribute("aria-describedby") == note.get_attribute("id")
    assert not browser.find_elements(By.CSS_SELECTOR, "#route-match[aria-invalid]")
    # a new route under a name in use would replace that route: said before any request
    name.clear()
    name.send_keys("lines")
    browser.find_element(By.ID, "check").click()
    wait_for(lambda: "exists already" in beside_name(), 10, "the name in use, beside it")
    assert browser.find_element(By.ID, "apply").get_attribute("disabled") is not None
    assert gw.config_path.read_text().count("plant/x") == 0
    # no name at all
    name.clear()
    browser.find_element(By.ID, "check").click()
    wait_for(lambda: "give the route a name" in beside_name(), 10, "the missing name")
    assert len(browser.find_elements(By.CSS_SELECTOR, ".field-error")) == 1
    # the file broken by hand (the gateway runs on): said, with the file's error; the
    # editor said "no routes" and that the route "may have been removed"
    gw.config_path.write_text(gw.config_path.read_text().replace("type: file", "type: fil"))
    browser.get(f"http://127.0.0.1:{gw.web_port}/#editor?route=lines")
    wait_for(lambda: "does not load" in text(browser, "#route-outcome"), 10, "the file refused")
    assert "sinks.archive.type: unknown sink type 'fil'" in text(browser, "#route-outcome")
    assert text(browser, "#route-list") == "none shown: the config file does not load"
    assert gw.stop() == 0


def test_a_dead_letter_gone_from_under_its_panel_is_said_gone(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # The open letter's Replay answered "Replayed 0: the gateway takes it in again like
    # new input." once it was purged (by Purge all, or another user), and after its own
    # Purge the panel kept offering Replay and Purge for a letter that was gone; with
    # the gateway gone, Replay did nothing at all (an unhandled rejection).
    name = f"uid{uuid.uuid4().hex[:8]}"
    gw = strict_json_to_archive(gateway_factory, mosquitto, name)
    pub = Publisher(mosquitto.port)
    try:
        browser.get(f"http://127.0.0.1:{gw.web_port}/#dead")  # no account: open on localhost

        def keys() -> list[str]:
            script = (
                "return [...document.querySelectorAll('#dead tr[data-key]')]"
                ".map(r => r.dataset.key)"
            )
            return browser.execute_script(script)  # type: ignore[no-any-return]

        def open_newest() -> str:
            seen = set(keys())
            pub.send(f"{name}/bad", "not json")
            seq = wait_for(lambda: next((k for k in keys() if k not in seen), None), 20, "it")
            browser.find_element(By.CSS_SELECTOR, f'#dead tr[data-key="{seq}"] button').click()
            wait_for(lambda: text(browser, "#dead-title") == f"Dead letter {seq}", 10, "it, open")
            return str(seq)

        seq = open_newest()
        browser.find_element(By.ID, "dead-purge-all").click()
        browser.switch_to.alert.accept()
        wait_for(lambda: text(browser, "#dead-all-outcome") == "Purged 1.", 10, "all purged")
        browser.find_element(By.ID, "dead-replay").click()
        wait_for(lambda: text(browser, "#dead-outcome") != "", 10, "the replay's outcome")
        assert text(browser, "#dead-outcome") == (
            f"Nothing replayed: dead letter {seq} is not there any more"
            " (replayed or purged already)."
        )
        open_newest()
        assert browser.find_element(By.ID, "dead-replay").is_enabled()  # a new letter: again
        browser.find_element(By.ID, "dead-purge").click()
        browser.switch_to.alert.accept()
        wait_for(lambda: text(browser, "#dead-outcome") == "Purged 1.", 10, "purged")
        for gone in ("dead-replay", "dead-purge"):
            assert not browser.find_element(By.ID, gone).is_enabled(), gone
        # the gateway gone while a letter is open: Replay says that nothing answered
        open_newest()
        assert gw.stop() == 0
        browser.find_element(By.ID, "dead-replay").click()
        wait_for(lambda: text(browser, "#dead-outcome").startswith("no answer from the gateway"),
                 10, "the replay's outcome")  # fmt: skip
        # and the verdict atop every page says so (it went on saying "All flowing")
        wait_for(lambda: text(browser, "#verdict-top").startswith(
            "No answer from the gateway since 20"), 10, "the verdict")  # fmt: skip
    finally:
        pub.close()
    assert gw.stop() == 0


def test_a_topic_filter_that_is_wrong_or_matches_nothing_says_so(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # A filter the gateway refused left the rows of the last filter under its error, as
    # if they were its answer; one that matched nothing said "no topics seen yet".
    name = f"uit{uuid.uuid4().hex[:8]}"
    gw = gateway_factory({
        "mqtt": {"url": mosquitto.url},
        "sources": {"plant": {"type": "mqtt", "topics": [f"{name}/#"], "qos": 1,
                              "client_id": f"gw-{name}"}},
        "routes": {"lines": {"match": f"{name}/#", "sinks": ["archive"]}},
        "sinks": {"archive": {"type": "file", "path": "archive.jsonl"}},
    })  # fmt: skip
    gw.start()
    pub = Publisher(mosquitto.port)
    try:
        pub.send(f"{name}/line/1", "20.5")
        browser.get(f"http://127.0.0.1:{gw.web_port}/#topics")  # no account: open on localhost
        wait_for(lambda: row(browser, "topics", f"topic {name}/line/1"), 15, "the topic's row")
        field = browser.find_element(By.ID, "topic-filter")
        field.clear()
        field.send_keys(f"{name}/#/x\n")
        wait_for(lambda: "'#' must be a whole level" in text(browser, "#topic-note"), 10, "error")
        wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR, "#topics tr[data-key]"), 10,
                 "no rows of the last filter")  # fmt: skip
        assert text(browser, "#topics") == "none: the topic filter is not valid"
        assert field.get_attribute("aria-invalid") == "true"
        field.clear()
        field.send_keys("elsewhere/#\n")
        wait_for(lambda: "none of the" in text(browser, "#topics"), 10, "none matches")
        assert text(browser, "#topics") == "none of the 1 topics seen lately matches elsewhere/#"
        assert field.get_attribute("aria-invalid") is None
    finally:
        pub.close()
    assert gw.stop() == 0


def test_the_pipeline_graph_and_a_route_s_panel_read_right_on_a_phone(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # The graph was scaled down to the phone's width: at 360 px its node names were
    # about 5 px high. It now keeps a width its words read at and scrolls in its box.
    tag = uuid.uuid4().hex[:8]
    gw = plant_lines_to_archive(gateway_factory, mosquitto, sources={
        "a": {"type": "mqtt", "topics": ["plant/a/#"], "client_id": f"gw-a-{tag}"},
        "b": {"type": "mqtt", "topics": ["plant/b/#"], "client_id": f"gw-b-{tag}"},
    })  # fmt: skip
    browser.set_window_size(360, 740)
    browser.get(f"http://127.0.0.1:{gw.web_port}/#pipeline")  # no account: open on localhost
    find(browser, 'g.node[data-node="sink archive"]')
    # two sources feed the route: its intake where their edges meet (no edge had a rate)
    wait_for(lambda: text(browser, '[data-rate="route lines"]').endswith("/s"), 10, "the intake")
    shown = browser.execute_script(
        "const g = document.getElementById('graph');"
        "const size = parseFloat(getComputedStyle(g.querySelector('text.name')).fontSize);"
        "return g.getBoundingClientRect().width / g.viewBox.baseVal.width * size"
    )
    assert shown >= 10, f"node names {shown:.1f} px high"
    wide = browser.execute_script("return document.documentElement.scrollWidth")
    assert wide <= browser.execute_script("return window.innerWidth")  # the box scrolls
    # a route has no series (/api/series: sources and sinks): said, not "no points yet"
    browser.execute_script("arguments[0].focus()", find(browser, 'g.node[data-node="route lines"]'))
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(lambda: "no 15-minute series for a route" in text(browser, "#node-sparks"), 10,
             "the route's panel")  # fmt: skip
    assert gw.stop() == 0


def test_a_sink_s_last_error_reads_on_a_phone(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # The last error's column got the width the others left it: at 360 px, a few words
    # a line, and the row of a sink that cannot connect was over 200 px tall. A gateway
    # id without a space (up to 256 bytes) widened every page past the phone's width.
    gid = "<img src=x onerror=window.pwned=1>" + "W" * 120
    gw = plant_lines_to_archive(gateway_factory, mosquitto, gateway={"id": gid}, sinks={
        "archive": {"type": "file", "path": "archive.jsonl"},
        "db": {"type": "postgres", "dsn": "postgresql://gw@127.0.0.1:1/x", "table": "readings"},
    })  # fmt: skip
    browser.set_window_size(360, 740)
    browser.get(f"http://127.0.0.1:{gw.web_port}/#sinks")  # no account: open on localhost
    error = "#sinks tr[data-key=db] td.error-text"
    wait_for(lambda: "127.0.0.1:1" in text(browser, error), 15, "the sink's last error")
    assert browser.execute_script("return window.innerWidth") <= 400
    height = browser.execute_script(
        f"return document.querySelector('{error}').getBoundingClientRect().height"
    )
    assert height < 120, f"the error cell is {height:.0f} px tall"
    wide = browser.execute_script("return document.documentElement.scrollWidth")
    assert wide <= browser.execute_script("return window.innerWidth")  # the box scrolls
    assert text(browser, "#gw") == gid
    assert browser.execute_script("return window.pwned") is None
    assert gw.stop() == 0


def test_an_edit_in_progress_stays_until_the_user_discards_it(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # Showing a hidden tab again reopened its page: the route editor refilled its form
    # from the config, and the technician who looked at another app lost the edit.
    gw = plant_lines_to_archive(gateway_factory, mosquitto)
    browser.get(f"http://127.0.0.1:{gw.web_port}/#editor?route=lines")  # open on localhost
    field = find(browser, "#route-match")
    wait_for(lambda: field.get_attribute("value") == "plant/#", 10, "the route, shown")
    field.send_keys("\nplant2/#")
    browser.execute_script(
        "window.seen = [];"
        "document.addEventListener('visibilitychange', () => seen.push(document.visibilityState))"
    )
    console = browser.current_window_handle
    browser.switch_to.new_window("tab")  # another app in front: the console's tab is hidden
    browser.close()
    browser.switch_to.window(console)
    wait_for(lambda: browser.execute_script("return seen.join(' ')") == "hidden visible", 10,
             "the tab hidden, then shown again")  # fmt: skip
    wait_for(lambda: text(browser, "#live") == "live", 10, "the stream, back")
    assert field.get_attribute("value") == "plant/#\nplant2/#"
    # Edit on the route being edited shows it as the config has it (it did nothing: the
    # address was already that of the route)
    edit = row(browser, "route-list", "lines")
    assert edit is not None
    edit.find_element(By.TAG_NAME, "button").click()
    wait_for(lambda: field.get_attribute("value") == "plant/#", 10, "the edit, discarded")
    # a check that finds nothing to change leaves Apply off (applying rewrote the
    # route's lines with its defaults written out, and kept a version, for no change)
    before = gw.config_path.read_text()
    browser.find_element(By.ID, "check").click()
    wait_for(lambda: "Nothing to apply" in text(browser, "#route-status"), 10, "nothing to do")
    assert text(browser, "#route-changes") == "nothing changes"
    assert browser.find_element(By.ID, "apply").get_attribute("disabled") is not None
    assert gw.config_path.read_text() == before
    # a link to a route that is not there says so (it showed the last route's form)
    browser.get(f"http://127.0.0.1:{gw.web_port}/#editor?route=gone")
    wait_for(lambda: "No route named gone" in text(browser, "#route-outcome"), 10, "said")
    assert browser.find_element(By.ID, "route-name").get_attribute("value") == ""
    assert text(browser, "#route-title") == "New route"
    # a reload the gateway rolled back changed nothing: the overview said "What changed"
    put = urllib.request.Request(
        f"http://127.0.0.1:{gw.web_port}/api/config/sources/meter",
        data=json.dumps({"type": "serial", "port": "/dev/ttyUSB-none"}).encode(),
        method="PUT",
    )
    with pytest.raises(urllib.error.HTTPError, match="409"):
        urllib.request.urlopen(put, timeout=10)
    wait_for(lambda: "rolled_back" in text(browser, "#editor-reload"), 10, "the reload")
    assert "not applied: source meter added" in text(browser, "#editor-reload")
    browser.get(f"http://127.0.0.1:{gw.web_port}/#overview")
    wait_for(lambda: "Not applied\nsource meter added" in text(browser, "#facts"), 10, "it")
    # a file broken by hand: the route being typed stayed not (the form was emptied), and
    # History said "no kept versions yet" (the versions answered 409); Check is off now,
    # and the kept version that runs is marked
    browser.execute_script("location.hash = '#editor'")
    find(browser, "#page-editor:not([hidden])")
    browser.find_element(By.ID, "new-route").click()
    browser.find_element(By.ID, "route-name").send_keys("typed")
    good = gw.config_path.read_text()
    gw.config_path.write_text(good + "routes: [\n")
    browser.execute_script("location.hash = '#overview'")
    browser.execute_script("location.hash = '#editor'")
    wait_for(lambda: "does not load" in text(browser, "#route-outcome"), 10, "the file, broken")
    assert browser.find_element(By.ID, "route-name").get_attribute("value") == "typed"
    assert browser.find_element(By.ID, "check").get_attribute("disabled") is not None
    wait_for(lambda: "(running now)" in text(browser, "#versions"), 10, "the running version")
    running = find(browser, "#versions tr[data-key] td.ok").find_element(By.XPATH, "..")
    running.find_element(By.TAG_NAME, "button").click()
    browser.switch_to.alert.accept()
    wait_for(lambda: text(browser, "#route-outcome").startswith("Rolled back"), 20, "mended")
    assert gw.config_path.read_text() == good
    assert browser.find_element(By.ID, "check").get_attribute("disabled") is None
    # a stream refused (16 open already: 503) is closed for good by the browser: the page
    # said it could not reach the gateway until reloaded; it opens it anew once one is free
    events = f"http://127.0.0.1:{gw.web_port}/api/events"
    browser.get("about:blank")
    held: list[Any] = []

    def hold_all() -> bool:
        try:
            while len(held) < 16:
                held.append(urllib.request.urlopen(events, timeout=10))
        except urllib.error.HTTPError as err:  # the page's stream, not yet let go
            err.close()
            return False
        return True

    try:
        wait_for(hold_all, 10, "every stream taken")
        browser.get(f"http://127.0.0.1:{gw.web_port}/#overview")
        wait_for(lambda: "cannot reach" in text(browser, "#live"), 10, "the stream, refused")
        # the verdict atop the page said "loading..." for as long, having had no document
        assert text(browser, "#verdict-top").startswith("No answer from the gateway since 20")
        held.pop().close()
        wait_for(lambda: text(browser, "#live") == "live", 15, "the stream, opened anew")
        wait_for(lambda: text(browser, "#verdict-top") == "All flowing", 5, "the verdict")
    finally:
        for response in held:
            response.close()
    assert gw.stop() == 0


def test_a_tab_opened_in_the_background_opens_its_stream_only_when_shown(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # A console opened in a background tab (ctrl+click, a restored browser session) opened
    # its live stream at once and held it until shown and hidden again: the stream kept
    # its session alive to its 12-hour lifetime, where a background tab is logged out
    # after its 2 idle hours. Seen from the gateway: 15 streams held by the test, the
    # 16th is free while the tab is hidden, and the page's once it is shown.
    gw = plant_lines_to_archive(gateway_factory, mosquitto)
    browser.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": "Object.defineProperty(document, 'hidden',"
            " {configurable: true, get: () => !window.shown});"
            "Object.defineProperty(document, 'visibilityState',"
            " {configurable: true, get: () => window.shown ? 'visible' : 'hidden'});"
        },
    )
    events = f"http://127.0.0.1:{gw.web_port}/api/events"
    held: list[Any] = []

    def take() -> bool:
        """One stream more for the test, or False when the gateway refuses it (16 open)."""
        try:
            held.append(urllib.request.urlopen(events, timeout=10))
        except urllib.error.HTTPError as err:
            err.close()
            assert err.code == 503, err
            return False
        return True

    try:
        for _ in range(15):
            assert take()
        browser.get(f"http://127.0.0.1:{gw.web_port}/#overview")
        find(browser, "#page-overview:not([hidden])")  # started: its stream asked for, if any
        # a request of the page's after that: a stream asked for before it has come first
        browser.execute_async_script("fetch('api/session').then(() => arguments[0]())")
        assert browser.execute_script("return document.hidden") is True
        assert take(), "the hidden tab holds an event stream"
        held.pop().close()
        browser.execute_script(
            "window.shown = true; document.dispatchEvent(new Event('visibilitychange'))"
        )
        wait_for(lambda: text(browser, "#live") == "live", 15, "the stream, opened when shown")
        assert not take(), "the page's stream is not open at the gateway"
    finally:
        for response in held:
            response.close()
    assert gw.stop() == 0


def test_logging_in_leads_to_the_page_asked_for(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # A bookmark to a view (/#dead) went through the login page to the overview: the
    # view, after the #, was dropped after logging in.
    gw = plant_lines_to_archive(
        gateway_factory, mosquitto, web={"username": USER, "password": PASSWORD}
    )
    browser.get(f"http://127.0.0.1:{gw.web_port}/#dead")
    wait_for(lambda: "/login" in browser.current_url, 10, "the login page")
    submit_login(browser, USER, PASSWORD)
    find(browser, "#page-dead:not([hidden])")
    assert browser.current_url.endswith("/#dead")
    # a logout in another tab (the cookie gone) leads this one to the login page too: the
    # 401s its stream and requests met asked for basic auth, and the browser put up its
    # own password dialog instead
    browser.execute_script(
        "fetch('api/session').then(r => r.json()).then(s => fetch('logout',"
        " {method: 'POST', headers: {'X-CSRF-Token': s.csrf}}))"
    )
    wait_for(lambda: browser.current_url.endswith("/login#dead"), 10, "the login page")
    assert gw.stop() == 0


def test_the_login_page_says_what_is_wrong_when_it_is_not_the_password(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # The login page said "Wrong user name or password." to every refusal: while the
    # users file could not be read (a typo in a hand edit: 503), a right password was
    # told wrong, and its user tried again and again; with no account (the console open,
    # 409) the page asked for a login there was none for.
    gw = plant_lines_to_archive(
        gateway_factory, mosquitto, web={"username": USER, "password": PASSWORD}
    )
    (gw.data_dir / "web-users").write_text("vic:viewer:not a hash\n")
    base = f"http://127.0.0.1:{gw.web_port}"
    browser.get(f"{base}/login")
    submit_login(browser, "vic", "viewer-pass-1")
    wait_for(lambda: "users file" in text(browser, "#error"), 10, "the users file named")
    assert "Wrong" not in text(browser, "#error")
    assert gw.stop() == 0

    (gw.data_dir / "web-users").unlink()  # the same folder: no account at all now
    open_gw = plant_lines_to_archive(gateway_factory, mosquitto)
    browser.get(f"http://127.0.0.1:{open_gw.web_port}/login#dead")
    submit_login(browser, "anyone", "anything")
    find(browser, "#page-dead:not([hidden])")
    assert open_gw.stop() == 0


def test_a_bidi_override_in_a_topic_does_not_turn_the_page_around(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # A topic holding U+202E (RIGHT-TO-LEFT OVERRIDE) was set as text, and its override
    # turned the rest of its line around: "plant/\u202egnp.exe" read "plant/exe.png", and
    # "... goes to: lines" after such a topic read backwards. The controls show as <U+202E>.
    name = f"uib{uuid.uuid4().hex[:8]}"
    spoof = f"{name}/\u202egnp.exe"
    gw = gateway_factory({
        "mqtt": {"url": mosquitto.url},
        "sources": {"plant": {"type": "mqtt", "topics": [f"{name}/#"], "qos": 1,
                              "client_id": f"gw-{name}"}},
        "routes": {"lines": {"match": f"{name}/#", "sinks": ["archive"]}},
        "sinks": {"archive": {"type": "file", "path": "archive.jsonl"}},
    })  # fmt: skip
    gw.start()
    pub = Publisher(mosquitto.port)
    try:
        pub.send(spoof, "\u2067" + MARKUP)
        pub.send(f"{name}/big", b"x" * 200_000)  # under max_payload
        pub.send(f"{name}/raw", b"\xff\xfe\x00bad")
        browser.get(f"http://127.0.0.1:{gw.web_port}/#topics")  # no account: open on localhost
        for topic in (f"{name}/raw", f"{name}/big"):
            wait_for(lambda t=topic: row(browser, "topics", f"topic {t}"), 15, topic)
        wait_for(lambda: row(browser, "topics", f"topic {spoof}"), 15, "the spoof's row")
        field = browser.find_element(By.ID, "match-topic")
        field.send_keys(spoof + "\n")
        wait_for(lambda: "goes to" in text(browser, "#match-result"), 10, "which routes")
        page = browser.execute_script("return document.body.textContent")
        shown = browser.execute_script(
            "return [...document.querySelectorAll('[title],[aria-label]')]"
            ".map(n => n.title + ' ' + n.getAttribute('aria-label')).join(' ')"
        )
        for control in ("\u202e", "\u2067"):
            assert control not in page and control not in shown
        assert text(browser, "#match-result").startswith(f"{name}/<U+202E>gnp.exe goes to: lines")
        assert "<U+2067><script>" in page  # the payload's markup as text
        assert browser.execute_script("return window.pwned") is None
        big = row(browser, "topics", f"topic {name}/big")
        assert big is not None and len(big.text) < 400  # a long payload cut short
        assert "… (195.3 KiB in all)" in big.text  # and its size said
        raw = row(browser, "topics", f"topic {name}/raw")
        assert raw is not None and "hex ff fe 00 62 61 64" in raw.text
    finally:
        pub.close()
    assert gw.stop() == 0


def test_a_bidi_mark_in_a_processor_s_setting_is_written_back_as_it_is(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # The page showed bidi controls as <U+200F> in a textarea too, whose text is its
    # value: an RLM in a Hebrew setting, untouched, was written back by Apply as the
    # literal text "<U+200F>".
    site = "\u200fמפעל"
    gw = gateway_factory({
        "mqtt": {"url": mosquitto.url},
        "routes": {"lines": {"match": "plant/#", "sinks": ["archive"],
                             "processors": [{"type": "transform", "set": {"site": site}}]}},
        "sinks": {"archive": {"type": "file", "path": "archive.jsonl"}},
    })  # fmt: skip
    gw.start(wait_sources=False)
    base = f"http://127.0.0.1:{gw.web_port}"
    browser.get(f"{base}/#editor?route=lines")  # no account: open on localhost
    field = find(browser, "#route-match")
    wait_for(lambda: field.get_attribute("value") == "plant/#", 10, "the route, shown")
    settings = find(browser, "#processors .psettings")
    assert site in settings.get_attribute("value")
    field.send_keys("\nplant2/#")
    browser.find_element(By.ID, "check").click()
    wait_for(lambda: browser.find_element(By.ID, "apply").is_enabled(), 10, "checked")
    assert "site" not in browser.find_element(By.ID, "route-diff").text  # only the match
    browser.find_element(By.ID, "apply").click()
    wait_for(lambda: text(browser, "#route-outcome").startswith("Applied"), 10, "applied")
    with urllib.request.urlopen(f"{base}/api/config", timeout=10) as answer:
        route = json.load(answer)["config"]["routes"]["lines"]
    assert route["match"] == ["plant/#", "plant2/#"]
    assert route["processors"][0]["set"] == {"site": site}
    assert gw.stop() == 0


def test_a_route_is_made_and_applied_from_the_keyboard_alone(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # Up on a processor moved its own list item, and Remove removed it: the focused button
    # left the page, and the keyboard's user was back on the page's body.
    gw = plant_lines_to_archive(gateway_factory, mosquitto)
    browser.get(f"http://127.0.0.1:{gw.web_port}/#editor")  # no account: open on localhost
    wait_for(lambda: "plant/#" in text(browser, "#route-list"), 10, "the route list")
    browser.execute_script("document.getElementById('new-route').focus()")

    def keys(*typed: str) -> None:
        for k in typed:
            browser.switch_to.active_element.send_keys(k)

    def focused() -> str:
        return str(browser.execute_script(
            "const a = document.activeElement, li = a.closest('#processors li');"
            "return (a.id || a.textContent) + (li ? ' ' + li.querySelector('input').value : '')"
        ))  # fmt: skip

    keys(Keys.ENTER, Keys.TAB, "kbd", Keys.TAB, "plant/kbd/#", Keys.TAB)
    assert focused() == "add-processor"
    keys(Keys.ENTER, Keys.ENTER, Keys.ENTER)  # three processors, json each
    for _ in range(4):  # back from Add to the last processor's type: Remove, Down, Up, settings
        keys(Keys.SHIFT + Keys.TAB)
    keys(Keys.SHIFT + Keys.TAB, Keys.BACKSPACE * 4, "filter", Keys.TAB)
    keys(Keys.BACKSPACE * 2, '{"condition": "true"}', Keys.TAB)
    assert focused() == "Up filter"
    described = "return document.activeElement.ariaDescribedByElements[0].value"
    assert browser.execute_script(described) == "filter"  # "Up, filter" to a screen reader
    keys(Keys.ENTER)
    assert focused() == "Up filter"  # it moved, and the focus with it
    keys(Keys.ENTER)
    assert focused() == "Up filter"
    types = "return [...document.querySelectorAll('#processors .ptype')].map(i => i.value)"
    assert browser.execute_script(types) == ["filter", "json", "json"]
    keys(Keys.TAB, Keys.TAB, Keys.ENTER)  # Remove the filter: the focus to its follower's
    assert focused() == "Remove json"
    keys(Keys.ENTER, Keys.ENTER)
    assert focused() == "add-processor"  # none left
    keys(Keys.TAB, Keys.SPACE, Keys.TAB)  # the sink archive chosen; then Check
    assert focused() == "check"
    keys(Keys.ENTER)
    wait_for(lambda: text(browser, "#route-changes") == "routes.kbd: added", 10, "the diff")
    assert "+  kbd:" in browser.find_element(By.ID, "route-diff").text
    keys(Keys.TAB)
    assert focused() == "apply"
    keys(Keys.ENTER)
    wait_for(lambda: text(browser, "#route-outcome").startswith("Applied"), 10, "applied")
    assert "Restarted or changed: route kbd added." in text(browser, "#route-outcome")
    assert focused().startswith("route-outcome")  # Apply, off while it ran, lost it
    assert "kbd:" in gw.config_path.read_text()
    assert gw.stop() == 0


def test_route_this_topic_and_replay_leave_the_keyboard_s_focus_where_the_user_goes_on(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # Route this topic hid the Topics page with its focused button, and a dead letter's
    # Replay was turned off once done: the focus fell to the page's body both times, and
    # the keyboard's user went on from the top of the page.
    name = f"uif{uuid.uuid4().hex[:8]}"
    gw = strict_json_to_archive(gateway_factory, mosquitto, name)
    pub = Publisher(mosquitto.port)

    def press(css: str, key: str = Keys.ENTER) -> None:
        browser.execute_script("arguments[0].focus()", find(browser, css))
        browser.switch_to.active_element.send_keys(key)

    def focused() -> str:
        return str(browser.execute_script("return document.activeElement.id"))

    try:
        pub.send(f"{name}/bad", "not json")
        browser.set_window_size(360, 740)  # on a phone: the tables' columns squeezed
        browser.get(f"http://127.0.0.1:{gw.web_port}/#topics")  # no account: open on localhost
        # each row's button names its row (a screen reader's list read "Edit, Edit, ...")
        route_it = f'#topics tr[data-key="topic {name}/bad"] button'
        assert find(browser, route_it).accessible_name == f"Route topic {name}/bad"
        assert find(browser, route_it).rect["height"] < 60  # one line, not a letter a line
        press(route_it)
        field = find(browser, "#route-match")
        wait_for(lambda: field.get_attribute("value") == f"{name}/bad", 10, "the form, filled")
        wait_for(lambda: focused() == "route-title", 10, "the focus on the form")
        assert find(browser, "#route-list tr button").accessible_name == "Edit route strict"
        press('#route-list tr[data-key="strict"] button')  # Edit: the form, below the list
        wait_for(lambda: text(browser, "#route-title") == "Route strict", 10, "the route")
        assert focused() == "route-title"
        browser.execute_script("location.hash = '#dead'")
        width = "return document.querySelector('#dead td.topic').getBoundingClientRect().width"
        assert wait_for(lambda: browser.execute_script(width), 10, "the topic") >= 170
        seq = find(browser, "#dead tr[data-key]").get_attribute("data-key")
        assert find(browser, "#dead tr button").accessible_name == f"Open dead letter {seq}"
        press("#dead tr[data-key] button")
        wait_for(lambda: focused() == "dead-title", 10, "the letter, open")
        browser.switch_to.active_element.send_keys(Keys.TAB)
        assert focused() == "dead-replay"
        browser.switch_to.active_element.send_keys(Keys.ENTER)
        wait_for(lambda: text(browser, "#dead-outcome").startswith("Replayed 1"), 10, "replayed")
        assert focused() == "dead-outcome"
    finally:
        pub.close()
    assert gw.stop() == 0


def test_a_route_being_typed_is_back_after_a_gateway_restart_logged_the_user_out(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # A restart ends the sessions (README, Access): the page went to the login page, and
    # the route being typed was gone when it came back after the login.
    gw = plant_lines_to_archive(
        gateway_factory, mosquitto, web={"username": USER, "password": PASSWORD}
    )
    browser.get(f"http://127.0.0.1:{gw.web_port}/#editor")

    def log_in() -> None:
        wait_for(lambda: browser.current_url.endswith("/login#editor"), 30, "the login page")
        submit_login(browser, USER, PASSWORD)
        wait_for(lambda: text(browser, "#who") == f"{USER} (operator)", 15, "logged in")

    log_in()
    wait_for(lambda: "plant/#" in text(browser, "#route-list"), 10, "the route list")
    browser.find_element(By.ID, "route-name").send_keys("typed")
    browser.find_element(By.ID, "route-match").send_keys("plant/typed/#\nplant/more/+")
    browser.find_element(By.ID, "add-processor").click()
    find(browser, "#processors .psettings").send_keys(Keys.BACKSPACE * 2, '{"condition": "')
    browser.find_element(By.CSS_SELECTOR, "#route-sinks input[value=archive]").click()
    assert gw.stop() == 0
    gw.start(wait_sources=False)
    log_in()
    wait_for(lambda: "is back as you left it" in text(browser, "#route-outcome"), 10, "back")
    assert browser.find_element(By.ID, "route-name").get_attribute("value") == "typed"
    assert browser.find_element(By.ID, "route-match").get_attribute("value") == (
        "plant/typed/#\nplant/more/+"
    )
    settings = browser.find_element(By.CSS_SELECTOR, "#processors .psettings")
    assert settings.get_attribute("value") == '{"condition": "'  # as typed, not JSON yet
    assert browser.find_element(By.CSS_SELECTOR, "#route-sinks input[value=archive]").is_selected()
    # once: the next visit of the editor has no draft to bring back
    assert browser.execute_script("return sessionStorage.length") == 0
    assert gw.stop() == 0


def test_a_route_typed_by_one_user_is_not_given_to_the_next_one_logging_in(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # The draft kept at a forced logout was the tab's, not the user's: another user
    # logging in next in the same tab got it, "The route you were typing is back".
    gw = plant_lines_to_archive(
        gateway_factory, mosquitto, web={"username": USER, "password": PASSWORD}
    )
    added = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "web", "passwd", "olga", "-c", str(gw.config_path)],
        input="olga-pass-1\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    browser.get(f"http://127.0.0.1:{gw.web_port}/#editor")

    def log_in(user: str, password: str) -> None:
        wait_for(lambda: browser.current_url.endswith("/login#editor"), 30, "the login page")
        submit_login(browser, user, password)
        wait_for(lambda: text(browser, "#who").startswith(f"{user} ("), 15, "logged in")

    log_in(USER, PASSWORD)
    wait_for(lambda: "plant/#" in text(browser, "#route-list"), 10, "the route list")
    browser.find_element(By.ID, "route-name").send_keys("typed")
    browser.find_element(By.ID, "route-match").send_keys("plant/typed/#")
    assert gw.stop() == 0
    gw.start(wait_sources=False)
    log_in("olga", "olga-pass-1")
    wait_for(lambda: "plant/#" in text(browser, "#route-list"), 10, "the route list")
    assert "is back" not in text(browser, "#route-outcome")
    assert browser.find_element(By.ID, "route-name").get_attribute("value") == ""
    assert browser.find_element(By.ID, "route-match").get_attribute("value") == ""
    assert browser.execute_script("return sessionStorage.length") == 0
    assert gw.stop() == 0


def test_names_of_128_characters_stay_within_a_phone_s_width(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # The route form's title, a sink's checkbox label, Apply's button and the pipeline
    # panel's title held the name unbroken: at 360 px the editor was 1,050 px wide.
    route, sink = "r" * 128, "s" * 128
    gw = gateway_factory({
        "mqtt": {"url": mosquitto.url},
        "routes": {route: {"match": "plant/#", "sinks": [sink]}},
        "sinks": {sink: {"type": "file", "path": "archive.jsonl"}},
    })  # fmt: skip
    gw.start(wait_sources=False)
    browser.set_window_size(360, 740)
    base = f"http://127.0.0.1:{gw.web_port}"

    def fits() -> bool:
        wide = browser.execute_script("return document.documentElement.scrollWidth")
        return bool(wide <= browser.execute_script("return window.innerWidth"))

    browser.get(f"{base}/#editor?route={route}")  # no account: open on localhost
    find(browser, "#route-match").send_keys("\nplant2/#")
    wait_for(lambda: text(browser, "#route-title") == f"Route {route}", 10, "the route")
    browser.find_element(By.ID, "check").click()
    wait_for(lambda: browser.find_element(By.ID, "apply").is_enabled(), 10, "checked")
    assert fits(), "the editor"
    browser.get(f"{base}/#pipeline")
    find(browser, f'g.node[data-node="sink {sink}"]').click()
    find(browser, "#node:not([hidden])")
    assert fits(), "the pipeline's panel"
    assert gw.stop() == 0


def test_apply_after_the_config_changed_since_the_check_shows_the_new_diff_first(
    mosquitto: Any, gateway_factory: Any, browser: WebDriver
) -> None:
    # Check showed the diff against the config of that moment; another user's edit of
    # the same route came between, and Apply wrote this form over it: their match was
    # undone, though the diff shown said nothing of it. The page compared the hash of
    # the live stream, which a hidden tab (or a stream down) does not update.
    gw = plant_lines_to_archive(gateway_factory, mosquitto)
    base = f"http://127.0.0.1:{gw.web_port}"
    browser.get(f"{base}/#editor?route=lines")  # no account: open on localhost
    field = find(browser, "#route-match")
    wait_for(lambda: field.get_attribute("value") == "plant/#", 10, "the route, shown")
    field.send_keys("\nplant2/#")
    browser.find_element(By.ID, "check").click()
    wait_for(lambda: browser.find_element(By.ID, "apply").is_enabled(), 10, "checked")
    assert "-  - plant3/#" not in browser.find_element(By.ID, "route-diff").text

    def put(match: list[str]) -> None:  # another user's edit
        other = {"match": match, "sinks": ["archive"]}
        request = urllib.request.Request(
            f"{base}/api/config/routes/lines", data=json.dumps(other).encode(), method="PUT"
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    # the tab hidden meanwhile: its stream closed, the hash it has is the old one
    browser.execute_script(
        "Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
        " document.dispatchEvent(new Event('visibilitychange'))"
    )
    put(["plant/#", "plant3/#"])
    browser.find_element(By.ID, "apply").click()
    wait_for(lambda: "changed since your check" in text(browser, "#route-outcome"), 10, "said")
    assert "plant3/#" in gw.config_path.read_text()  # not applied over the other edit
    wait_for(lambda: "plant3" in browser.find_element(By.ID, "route-diff").text, 10, "new diff")
    assert "then apply" in text(browser, "#route-outcome")
    put(["plant/#", "plant2/#"])  # the same edit as this form's, made by another user
    browser.find_element(By.ID, "apply").click()
    wait_for(lambda: "has this edit already" in text(browser, "#route-outcome"), 10, "same")
    assert "then apply" not in text(browser, "#route-outcome")
    assert "Nothing to apply" in text(browser, "#route-status")
    browser.find_element(By.ID, "route-match").send_keys("\nplant4/#")
    browser.find_element(By.ID, "check").click()
    wait_for(lambda: browser.find_element(By.ID, "apply").is_enabled(), 10, "checked")
    browser.find_element(By.ID, "apply").click()  # nothing came between: it applies
    wait_for(lambda: text(browser, "#route-outcome").startswith("Applied"), 10, "applied")
    assert "plant4/#" in gw.config_path.read_text()
    assert gw.stop() == 0
