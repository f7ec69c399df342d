"""One serial port, one source; one address, one listener: check-config refuses a config
whose second source could never open its port or address. These all passed the check,
then the second retried forever ("cannot connect to rtu://...", "the address is in use")."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from gateway.config.load import load
from gateway.core.errors import ConfigError

pytestmark = pytest.mark.unit

TOKEN = "abcdefghijklmnopqrstu"


def problems(tmp_path: Path, sources: str, web: str = "{enabled: false}") -> list[str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"gateway: {{id: a, data_dir: '{tmp_path}/data'}}\nweb: {web}\nsources:\n{sources}"
    )
    try:
        load(str(path))
    except ConfigError as err:
        return [p.split(": ", 1)[1] for p in err.problems]
    return []


def test_two_sources_on_one_serial_port_are_refused(tmp_path: Path) -> None:
    link = tmp_path / "by-id"
    os.symlink("/dev/ttyS7", link)  # /dev/serial/by-id/... names the same port
    found = problems(
        tmp_path,
        "  a: {type: modbus, url: 'rtu:///dev/ttyS7?baudrate=9600', registers: {x: {address: 0}}}\n"
        f"  b: {{type: serial, port: {link}}}\n"
        "  c:\n"
        "    type: modbus\n"
        "    devices:\n"
        "      m1: {url: 'rtu:///dev/ttyS7', unit: 2, registers: {x: {address: 0}}}\n"
        "      m2: {url: 'rtu:///dev/ttyS8', unit: 2, registers: {x: {address: 0}}}\n"
        "  d: {type: serial, port: 'socket://127.0.0.1:4001'}\n"
        "  e: {type: serial, port: 'socket://127.0.0.1:4001'}\n",
    )
    line = (
        "is also used by source 'a': only one of them can open it; Modbus devices on one"
        " line go under one source's devices:"
    )
    assert found == [
        f"sources.b.port: the serial port {link} {line}",
        f"sources.c.devices.m1.url: the serial port /dev/ttyS7 {line}",
    ]


def test_a_listener_on_the_address_of_another_is_refused(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        f"  a: {{type: http, tokens: [{TOKEN}], listen: '127.0.0.1:18080'}}\n"
        f"  b: {{type: http, tokens: [{TOKEN}], listen: '0.0.0.0:8089'}}\n"
        f"  c: {{type: http, tokens: [{TOKEN}], listen: '127.0.0.1:8089'}}\n"
        f"  d: {{type: http, tokens: [{TOKEN}], listen: '127.0.0.1:8090'}}\n",
        web="{listen: '127.0.0.1:18080'}",
    )
    assert found == [
        "sources.a.listen: the address 127.0.0.1:18080 is also used by web.listen (the"
        " console): only one of them can open it",
        "sources.c.listen: the address 127.0.0.1:8089 is also used by source 'b': only one"
        " of them can open it",
    ]
    assert (
        problems(tmp_path, f"  a: {{type: http, tokens: [{TOKEN}], listen: '127.0.0.1:8080'}}\n")
        == []
    )


def test_ipv4_and_ipv6_listeners_share_a_port_and_a_nul_in_a_port_is_refused(
    tmp_path: Path,
) -> None:
    """0.0.0.0 and [::] on one port both open (the listeners are IPv6-only, as asyncio
    makes them), so they are not refused; [::1] under [::] is. A NUL in a serial port's
    path crashed the check with a traceback (os.path.realpath)."""
    found = problems(
        tmp_path,
        f"  a: {{type: http, tokens: [{TOKEN}], listen: '0.0.0.0:18081'}}\n"
        f"  b: {{type: http, tokens: [{TOKEN}], listen: '[::]:18081'}}\n"
        f"  c: {{type: http, tokens: [{TOKEN}], listen: '[::1]:18081'}}\n"
        '  s: {type: serial, port: "/dev/tty\\0X"}\n'
        '  m: {type: modbus, url: "rtu:///dev/tty\\0Y", registers: {x: {address: 0}}}\n',
    )
    assert sorted(found) == [
        "sources.c.listen: the address [::1]:18081 is also used by source 'b': only one"
        " of them can open it",
        "sources.m.url: 'rtu:///dev/tty\\x00Y': a serial port's path holds no NUL character",
        "sources.s.port: a serial device's path holds no NUL character",
    ]

    async def both() -> None:
        loop = asyncio.get_running_loop()
        six = await loop.create_server(asyncio.Protocol, "::", 0)
        port = six.sockets[0].getsockname()[1]
        four = await loop.create_server(asyncio.Protocol, "0.0.0.0", port)
        for server in (six, four):
            server.close()
            await server.wait_closed()

    asyncio.run(both())


def test_two_redis_sources_on_one_consumer_or_processing_list_are_refused(
    tmp_path: Path,
) -> None:
    """Each took the other's entries for its own: a stream consumer's start acknowledged
    the other's pending entries at or before its own position as stored; a list source
    removed the other's items from the head of their processing list."""
    found = problems(
        tmp_path,
        "  a: {type: redis, url: 'redis://Redis.lan:6379/0', key: readings}\n"
        "  b: {type: redis, url: 'redis://redis.lan/0', key: readings, field: payload}\n"
        "  c: {type: redis, url: 'redis://redis.lan/0', key: readings, group: other}\n"
        "  d: {type: redis, url: 'redis://redis.lan/0', key: readings, consumer: d}\n"
        "  e: {type: redis, url: 'redis://redis.lan/1', key: readings}\n"
        "  f: {type: redis, url: 'redis://redis.lan/1', key: q, mode: list}\n"
        "  g: {type: redis, url: 'redis://redis.lan/1', key: p, mode: list, processing: "
        "'q:processing'}\n"
        "  h: {type: redis, url: 'redis://redis.lan/2', key: q, mode: list}\n"
        "  i: {type: redis, url: 'redis://redis.lan/1?db=3', key: q, mode: list}\n"
        "  j: {type: redis, url: 'redis://redis.lan?db=01', key: q, mode: list}\n",
    )
    assert found == [
        "sources.b.consumer: the consumer (the gateway id) of group edge-stream of stream"
        " readings on redis.lan:6379/0 is also used by source 'a': each would take the"
        " other's entries for its own at a start, acknowledge them as stored and lose them;"
        " give each its own consumer or group",
        "sources.g.processing: the processing list q:processing on redis.lan:6379/1 is also"
        " used by source 'f': each would remove the other's items from it as its own,"
        " stored or not; give each its own processing list",
        "sources.j.processing: the processing list q:processing on redis.lan:6379/1 is also"
        " used by source 'f': each would remove the other's items from it as its own,"
        " stored or not; give each its own processing list",
    ]


def sink_problems(
    tmp_path: Path, sinks: str, gateway: str = "", web: str = "{enabled: false}"
) -> list[str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"gateway: {{id: a, data_dir: '{tmp_path}/data'{gateway}}}\nweb: {web}\nsinks:\n{sinks}"
    )
    try:
        load(str(path))
    except ConfigError as err:
        return [p.split(": ", 1)[1] for p in err.problems]
    return []


def test_a_file_sink_on_a_file_of_the_gateway_or_of_another_file_sink_is_refused(
    tmp_path: Path,
) -> None:
    # `path: store.db` passed the check; the sink then found "no JSON Lines" in the live
    # store, moved it aside to store.db.1 and intake stopped. Two sinks on one file
    # appended to it both, and the rotation of one moved the other's file away.
    data = os.path.realpath(tmp_path / "data")
    found = sink_problems(
        tmp_path,
        "  a: {type: file, path: out.jsonl}\n"
        f"  b: {{type: file, path: '{data}/sub/../out.jsonl'}}\n"
        "  c: {type: file, path: out.jsonl.2}\n"
        "  d: {type: file, path: store.db}\n"
        "  e: {type: file, path: secret.key}\n"
        "  f: {type: file, path: broker/x.jsonl}\n"
        "  g: {type: file, path: h.csv}\n"
        "  h: {type: file, format: csv}\n"
        "  i: {type: file, path: out.jsonl.old}\n"
        "  j: {type: file, path: store.db-wal}\n"
        "  k: {type: file, path: store.dbx/x.jsonl}\n",
    )
    tail = "; give this sink a file of its own"
    assert found == [
        f"sinks.b.path: '{data}/sub/../out.jsonl': '{data}/out.jsonl' is the file of sink 'a'"
        f" too{tail}",
        f"sinks.c.path: 'out.jsonl.2': '{data}/out.jsonl.2' is where sink 'a' rotates its"
        f" file{tail}",
        f"sinks.d.path: 'store.db': '{data}/store.db' is the gateway's store, or one of its"
        f" files{tail}",
        f"sinks.e.path: 'secret.key': '{data}/secret.key' is the gateway's secret key file{tail}",
        f"sinks.f.path: 'broker/x.jsonl': '{data}/broker/x.jsonl' is in the gateway's broker/"
        f" folder{tail}",
        f"sinks.h.path: 'h.csv' (the default): '{data}/h.csv' is the file of sink 'g' too{tail}",
        f"sinks.j.path: 'store.db-wal': '{data}/store.db-wal' is the gateway's store, or one"
        f" of its files{tail}",
    ]


def test_only_the_stores_own_files_are_refused_not_any_name_starting_store_db(
    tmp_path: Path,
) -> None:
    # Any name starting with store.db was refused: store.dbx.csv, store.db-export.jsonl.
    names = [
        "store.dbx.csv",
        "store.db-export.jsonl",
        "store.db.jsonl",
        "store.db-journal",
        "store.db.new",
        "store.db.new-wal",
        "store.db.corrupt-20261130T230000Z",
        "store.db.corrupt-20261130T230000Z-shm",
        "store.new",
    ]
    found = sink_problems(
        tmp_path, "".join(f"  s{i}: {{type: file, path: {n}}}\n" for i, n in enumerate(names))
    )
    refused = [p.split(": ", 2)[1] for p in found]
    assert refused == [repr(name) for name in names[3:]]
    assert found[-1].endswith(
        "is the gateway's store's disk reserve; give this sink a file of its own"
    )


def test_only_the_numbers_a_rotation_writes_make_a_rotated_file(tmp_path: Path) -> None:
    # isdigit() took x.05, x.0 and x.² for rotations of x; the sink writes x.5 only.
    found = sink_problems(
        tmp_path,
        "  a: {type: file, path: x}\n"
        "  b: {type: file, path: x.05}\n"
        "  c: {type: file, path: x.0}\n"
        "  d: {type: file, path: x.²}\n"
        "  e: {type: file, path: x.\u0661}\n"  # an Arabic-Indic 1
        "  f: {type: file, path: x.12}\n",
    )
    assert [problem.split(": ", 1)[0] for problem in found] == ["sinks.f.path"]
    assert "is where sink 'a' rotates its file" in found[0]


def test_a_path_the_file_sink_refuses_itself_is_said_once_and_paths_are_quoted(
    tmp_path: Path,
) -> None:
    # The claims check looked at such a path again: a second line, for the same path, with
    # the line break pasted into it written out raw (a message of two lines).
    found = sink_problems(
        tmp_path,
        '  a: {type: file, path: "out.jsonl\\n"}\n'
        '  b: {type: file, path: "out.jsonl\\n"}\n'
        "  c: {type: file, path: '~/out.jsonl'}\n"
        "  d: {type: file, path: '~/out.jsonl'}\n"
        "  e: {type: file, path: 'x\ty.jsonl'}\n"
        "  f: {type: file, path: 'x\ty.jsonl'}\n",
    )
    assert [p.split(": ", 1)[0] for p in found] == [f"sinks.{n}.path" for n in "abcdef"]
    assert all("\n" not in p and "too" not in p for p in found), found


def test_a_secret_key_or_users_file_set_relative_is_where_the_gateway_opens_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set, both are opened from the working directory (the CLI, the loader, the console),
    # but the check put them under data_dir: a sink on data/keys/secret.key was refused
    # though no gateway file is there, and one on the real file passed.
    monkeypatch.chdir(tmp_path)
    data = os.path.realpath(tmp_path / "data")
    here = os.path.realpath(tmp_path)
    found = sink_problems(
        tmp_path,
        "  a: {type: file, path: keys/secret.key}\n"
        "  b: {type: file, path: keys/users}\n"
        f"  c: {{type: file, path: '{here}/keys/secret.key'}}\n"
        f"  d: {{type: file, path: '{here}/keys/users'}}\n"
        "  e: {type: file, path: web-users}\n",
        gateway=", secret_key_file: keys/secret.key",
        web="{enabled: false, users_file: keys/users}",
    )
    tail = "; give this sink a file of its own"
    assert found == [
        f"sinks.c.path: '{here}/keys/secret.key': '{here}/keys/secret.key' is the gateway's"
        f" secret key file{tail}",
        f"sinks.d.path: '{here}/keys/users': '{here}/keys/users' is the gateway's console"
        f" users file{tail}",
    ]
    # Left unset, each is the default file under data_dir.
    found = sink_problems(
        tmp_path,
        "  a: {type: file, path: secret.key}\n  b: {type: file, path: web-users}\n",
    )
    assert [p.split(":")[0] for p in found] == ["sinks.a.path", "sinks.b.path"]
    assert data in found[0]


def test_redis_sinks_sharing_a_dedupe_prefix_on_one_server_are_refused(tmp_path: Path) -> None:
    # Both passed the check: a FlowFile routed to both was XADDed by `a` and left out by `b`
    # as written already (its id among the recent ones), and reported delivered.
    url = "redis://127.0.0.1:6379/0"
    found = sink_problems(
        tmp_path,
        f"  a: {{type: redis, url: '{url}', dedupe_prefix: shared}}\n"
        f"  b: {{type: redis, url: '{url}', mode: list, dedupe_prefix: shared}}\n"
        f"  c: {{type: redis, url: '{url}', mode: publish, dedupe_prefix: 'edge:d'}}\n"
        f"  d: {{type: redis, url: 'redis://u:p@127.0.0.1/0', mode: list}}\n"
        "  e: {type: redis, url: 'redis://127.0.0.1:6379/1', dedupe_prefix: shared}\n"
        f"  f: {{type: redis, url: '{url}', dedupe: false}}\n"
        f"  g: {{type: redis, url: '{url}', mode: hash}}\n"
        "  h: {type: redis, url: 'redis://127.0.0.1:6379/0', dedupe: false, mode: list}\n"
        # the defaults of f and g, which keep no recent ids
        f"  i: {{type: redis, url: '{url}', dedupe_prefix: 'edge:f'}}\n"
        f"  j: {{type: redis, url: '{url}', mode: list, dedupe_prefix: 'edge:g'}}\n",
    )
    tail = (
        ": a FlowFile routed to both would be written by one and left out by the other as"
        " written already; give each sink its own"
    )
    assert found == [
        f"sinks.b.dedupe_prefix: 'shared' is the dedupe_prefix of sink 'a' too, on the same"
        f" Redis (127.0.0.1:6379/0){tail}",
        f"sinks.d.dedupe_prefix: 'edge:d' is the dedupe_prefix of sink 'c' too, on the same"
        f" Redis (127.0.0.1:6379/0){tail}",
    ]


def test_redis_sinks_dedupe_apart_on_the_database_of_the_query_and_not_in_a_cluster(
    tmp_path: Path,
) -> None:
    # redis-py takes `?db=N` over the path's /N: sinks on databases 1 and 2 were refused as
    # sharing one (both read as /0), and one on /1 clashed with ?db=1 unseen. A cluster has
    # database 0 alone: /0 and /1 there are one database (its keys are per slot, apart from
    # those of a sink that is no cluster).
    found = sink_problems(
        tmp_path,
        "  a: {type: redis, url: 'redis://localhost?db=1', dedupe_prefix: p}\n"
        "  b: {type: redis, url: 'redis://localhost?db=2', dedupe_prefix: p}\n"
        "  c: {type: redis, url: 'redis://LOCALHOST:6379/1', dedupe_prefix: p}\n"
        "  d: {type: redis, url: 'redis://localhost/3?db=01', dedupe_prefix: p}\n"
        "  e: {type: redis, url: 'redis://localhost/0', cluster: true, dedupe_prefix: p}\n"
        "  f: {type: redis, url: 'redis://localhost/0', cluster: true, dedupe_prefix: q}\n"
        "  g: {type: redis, url: 'redis://localhost?db=3', cluster: true, dedupe_prefix: q}\n"
        "  h: {type: redis, url: 'redis://[::1]:6380/2', dedupe_prefix: q}\n"
        "  i: {type: redis, url: 'redis://[::1]:6380?db=2', dedupe_prefix: q}\n",
    )
    assert [problem.split(" is ")[0] for problem in found] == [
        "sinks.c.dedupe_prefix: 'p'",
        "sinks.d.dedupe_prefix: 'p'",
        "sinks.g.dedupe_prefix: 'q'",
        "sinks.i.dedupe_prefix: 'q'",
    ]
    assert "sink 'a' too, on the same Redis (localhost:6379/1)" in found[0]
    assert "sink 'f' too, on the same Redis (localhost:6379 (cluster))" in found[2]
    assert "sink 'h' too, on the same Redis ([::1]:6380/2)" in found[3]


def test_a_listener_on_the_embedded_brokers_address_is_refused(tmp_path: Path) -> None:
    """The embedded broker starts first: the console on its address stopped the start with
    "web.listen 127.0.0.1:18090 is in use by another program", the gateway's own broker;
    an http source there retried for ever. Under `auto` with nothing on the gateway's
    broker none is started, so its address is free."""
    mqtt_source = "  m: {type: mqtt, topics: [a/#]}\n"
    http = f"  h: {{type: http, tokens: [{TOKEN}], listen: '127.0.0.1:18091'}}\n"
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"gateway: {{id: a, data_dir: '{tmp_path}/data'}}\n"
        "mqtt: {url: embedded, embedded_listen: '127.0.0.1:18090'}\n"
        "web: {listen: '127.0.0.1:18090'}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    assert [p.split(": ", 1)[1] for p in caught.value.problems] == [
        "mqtt.embedded_listen: the address 127.0.0.1:18090 is also used by web.listen (the"
        " console): only one of them can open it"
    ]
    found = problems(
        tmp_path,
        mqtt_source + http + "mqtt: {embedded_listen: '0.0.0.0:18091'}\n",
    )
    assert found == [
        "sources.h.listen: the address 127.0.0.1:18091 is also used by mqtt.embedded_listen"
        " (the gateway's broker): only one of them can open it"
    ]
    assert problems(tmp_path, http + "mqtt: {embedded_listen: '127.0.0.1:18091'}\n") == []


def test_localhost_and_its_loopback_address_are_one_address(tmp_path: Path) -> None:
    """localhost binds 127.0.0.1 and ::1: the console on localhost:18092 passed the check
    beside the embedded broker on 127.0.0.1:18092, then stopped the start with "web.listen
    localhost:18092 is in use by another program", the gateway's own broker."""
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"gateway: {{id: a, data_dir: '{tmp_path}/data'}}\n"
        "mqtt: {url: embedded, embedded_listen: '127.0.0.1:18092'}\n"
        "web: {listen: 'localhost:18092'}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    assert [p.split(": ", 1)[1] for p in caught.value.problems] == [
        "mqtt.embedded_listen: the address 127.0.0.1:18092 is also used by web.listen (the"
        " console): only one of them can open it"
    ]
    found = problems(
        tmp_path,
        f"  a: {{type: http, tokens: [{TOKEN}], listen: 'LocalHost:18093'}}\n"
        f"  b: {{type: http, tokens: [{TOKEN}], listen: '[::1]:18093'}}\n"
        f"  c: {{type: http, tokens: [{TOKEN}], listen: 'localhost:18094'}}\n"
        f"  d: {{type: http, tokens: [{TOKEN}], listen: '127.0.0.2:18094'}}\n",
    )
    assert found == [
        "sources.b.listen: the address [::1]:18093 is also used by source 'a': only one"
        " of them can open it"
    ]
