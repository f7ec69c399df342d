"""A webhook receiver for the tests: a real aiohttp server in its own process.

    python tests/http_receiver.py PORT FOLDER

Every request to any path but /_control and /_received is answered with the status set
by /_control (default 200) and, when answered 2xx, appended as one JSON line to
FOLDER/received.jsonl: {"method", "path", "query", "headers", "body"} (body as text).
So what it stored survives a stop and a start (the outage tests).

POST /_control {"status": 500, "times": 2, "body": "...", "headers": {...}} answers
the next `times` requests (default: all until changed) with that status, body and headers,
then 200 again. Every request answered so (not the GETs of the feed below, not
/refuse paths), whatever its status, is also logged to
FOLDER/requests.jsonl as {"at": time.monotonic() on arrival, "status", "path",
"key": its Idempotency-Key}; GET /_requests returns them (the Retry-After test reads
the spacing of the attempts). A path holding `/refuse` is always answered 400 (the contract's bad
FlowFile). GET of another path answers {"data": {"readings": [...]}}: the JSON
bodies POSTed to that path so far (an API for the rest source). GET /_received
returns the stored requests as a JSON array.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web


def main() -> None:
    port, folder = int(sys.argv[1]), Path(sys.argv[2])
    store = folder / "received.jsonl"
    attempts = folder / "requests.jsonl"
    answer: dict[str, Any] = {"status": 200, "times": None, "body": "", "headers": {}}

    async def control(request: web.Request) -> web.Response:
        answer.update({"status": 200, "times": None, "body": "", "headers": {}})
        answer.update(await request.json())
        return web.json_response(answer)

    async def received(request: web.Request) -> web.Response:
        if not store.exists():
            return web.json_response([])
        lines = store.read_text().splitlines()
        return web.json_response([json.loads(line) for line in lines])

    async def requests(request: web.Request) -> web.Response:
        if not attempts.exists():
            return web.json_response([])
        lines = attempts.read_text().splitlines()
        return web.json_response([json.loads(line) for line in lines])

    async def feed(request: web.Request) -> web.Response:
        readings = []
        if store.exists():
            for line in store.read_text().splitlines():
                record = json.loads(line)
                if record["path"] == request.path and record["method"] == "POST":
                    readings.append(json.loads(record["body"]))
        return web.json_response({"data": {"readings": readings}})

    async def take(request: web.Request) -> web.Response:
        arrived = time.monotonic()
        if request.method == "GET" and answer["status"] == 200:
            return await feed(request)
        body = await request.read()
        status = answer["status"]
        response = web.Response(status=status, text=answer["body"] or "", headers=answer["headers"])
        if "/refuse" in request.path:
            return web.Response(status=400, text="refused: this path takes nothing")
        if answer["times"] is not None:
            answer["times"] -= 1
            if answer["times"] <= 0:
                answer.update({"status": 200, "times": None, "body": "", "headers": {}})
        with attempts.open("a") as f:
            key = request.headers.get("Idempotency-Key")
            logged = {"at": arrived, "status": status, "path": request.path, "key": key}
            f.write(json.dumps(logged) + "\n")
        if 200 <= status < 300:
            record = {
                "method": request.method,
                "path": request.path,
                "raw_path": request.raw_path,
                "query": request.query_string,
                "headers": dict(request.headers),
                "body": body.decode("utf-8", "replace"),
            }
            with store.open("a") as f:
                f.write(json.dumps(record) + "\n")
        return response

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/_control", control)
    app.router.add_get("/_received", received)
    app.router.add_get("/_requests", requests)
    app.router.add_route("*", "/{tail:.*}", take)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
