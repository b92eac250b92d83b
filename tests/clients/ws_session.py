"""A WebSocket session against Herald's gateway with the `websockets` package.

Usage: ws_session.py URL [CA_FILE [TOKEN]]   (ws://HOST:PORT/v1/ws, or wss:// trusting
CA_FILE; TOKEN, for a broker with --auth, is sent as ?access_token=)
Publishes, tails, consumes as a push-group member with handles, answers, and checks the
errors; prints one JSON line of what it saw and exits 0, or raises.
"""

import asyncio
import json
import ssl
import sys

import websockets


PENDING = []


async def recv(ws, op, timeout=10):
    """The next message of kind `op`; others that come first wait for their turn."""
    for i, message in enumerate(PENDING):
        if message["op"] == op:
            return PENDING.pop(i)
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if message["op"] == op:
            return message
        PENDING.append(message)


async def main(url, ca_file, token):
    seen = {}
    tls = ssl.create_default_context(cafile=ca_file) if ca_file else None
    if token:
        url = f"{url}?access_token={token}"
    async with websockets.connect(url, ssl=tls) as ws:
        await ws.send(json.dumps({"op": "publish", "req": "p1", "topic": "jobs",
                                  "records": [{"value": f"job {i}"} for i in range(6)]}))
        published = await recv(ws, "published")
        assert published["req"] == "p1", published
        assert [o["offset"] for o in published["offsets"]] == list(range(6)), published
        seen["durability"] = published["durability"]

        # Log mode: everything from the start, with cursors.
        await ws.send(json.dumps({"op": "tail", "id": "t", "topic": "jobs", "from": "earliest"}))
        assert (await recv(ws, "subscribed"))["id"] == "t"
        tailed = [await recv(ws, "record") for _ in range(6)]
        assert [r["value"] for r in tailed] == [f"job {i}" for i in range(6)], tailed
        assert tailed[-1]["cursor"] == "0:6", tailed[-1]
        await ws.send(json.dumps({"op": "unsubscribe", "id": "t"}))
        await recv(ws, "unsubscribed")

        # A push-group member: deliveries with handles, within the window.
        await ws.send(json.dumps({"op": "subscribe", "id": "w", "topic": "jobs",
                                  "group": "workers", "prefetch": 4}))
        await recv(ws, "subscribed")
        first = [await recv(ws, "delivery") for _ in range(4)]
        assert all(d["sub"] == "w" and d["delivery_count"] == 1 for d in first), first
        assert not first[0]["redelivered"]
        try:
            extra = await recv(ws, "delivery", timeout=0.5)
            raise AssertionError(f"more than the window: {extra}")
        except asyncio.TimeoutError:
            pass
        handles = [d["handle"] for d in first]
        await ws.send(json.dumps({"op": "ack", "req": "a1", "handles": handles[:3]}))
        answered = await recv(ws, "answered")
        assert all(r.get("ok") for r in answered["results"]), answered
        # The window refills with the last two records.
        rest = [await recv(ws, "delivery") for _ in range(2)]
        await ws.send(json.dumps({"op": "ack", "handles": [d["handle"] for d in rest]}))
        # A nack brings one back at once, redelivered.
        await ws.send(json.dumps({"op": "nack", "req": "n1", "handles": [handles[3]]}))
        await recv(ws, "answered")
        again = await recv(ws, "delivery")
        assert again["offset"] == first[3]["offset"] and again["redelivered"], again
        assert again["delivery_count"] == 2, again
        await ws.send(json.dumps({"op": "ack", "req": "a2", "handles": [again["handle"]]}))
        await recv(ws, "answered")

        # Errors: each answered, and the socket goes on.
        await ws.send("{not json")
        assert (await recv(ws, "error"))["error"]["code"] == "InvalidArgument"
        await ws.send(json.dumps({"op": "fly", "req": "x"}))
        err = await recv(ws, "error")
        assert err["req"] == "x" and err["error"]["code"] == "InvalidArgument", err
        await ws.send(json.dumps({"op": "ack", "req": "bad", "handles": ["nonsense", "999.0.0.1"]}))
        results = (await recv(ws, "answered"))["results"]
        assert results[0]["error"]["code"] == "InvalidArgument", results
        assert results[1]["error"]["code"] == "UnknownSubscription", results
        await ws.send(json.dumps({"op": "subscribe", "id": "m", "topic": "missing", "group": "g"}))
        err = await recv(ws, "error")
        assert err["id"] == "m" and err["error"]["code"] == "UnknownTopic", err
        await ws.send(json.dumps({"op": "publish", "req": "p2", "topic": "jobs", "records": []}))
        assert (await recv(ws, "error"))["req"] == "p2"

        await ws.send(json.dumps({"op": "publish", "req": "p3", "topic": "jobs",
                                  "records": [{"value": "still serving"}]}))
        assert (await recv(ws, "published"))["offsets"] == [{"partition": 0, "offset": 6}]
    print(json.dumps(seen))


asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None,
                 sys.argv[3] if len(sys.argv) > 3 else None))
