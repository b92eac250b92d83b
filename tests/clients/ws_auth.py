"""A WebSocket session against a Herald broker started with --auth, with `websockets`.

Usage: ws_auth.py URL TOKEN   (ws://HOST:PORT/v1/ws; TOKEN for a user who may publish to
and consume `jobs`, and nothing on `secret`)

Checks that the upgrade is refused without the token and accepted with it (as
?access_token=), that a request outside the user's rules is refused while the socket goes
on, prints "ready", waits for a line on stdin (the token is being revoked), then waits for
the broker's CredentialsRevoked error and the socket's end. Prints one JSON line of what
it saw and exits 0, or raises.
"""

import asyncio
import json
import sys

import websockets


def status_of(refusal):
    response = getattr(refusal, "response", None)
    if response is not None:
        return response.status_code
    return refusal.status_code


async def recv(ws, op, timeout=10):
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if message["op"] == op:
            return message


async def main(url, token):
    seen = {}
    try:
        async with websockets.connect(url):
            raise AssertionError("the upgrade was accepted without a token")
    except (websockets.exceptions.InvalidStatus if hasattr(websockets.exceptions, "InvalidStatus")
            else websockets.exceptions.InvalidStatusCode) as refusal:
        seen["refused_without_token"] = status_of(refusal)

    async with websockets.connect(f"{url}?access_token={token}") as ws:
        await ws.send(json.dumps({"op": "publish", "req": "p", "topic": "jobs",
                                  "records": [{"value": "from python"}]}))
        published = await recv(ws, "published")
        assert published["req"] == "p", published
        # Each op outside the rules: refused, naming what was asked, with no data.
        await ws.send(json.dumps({"op": "subscribe", "id": "s", "topic": "secret", "group": "g"}))
        seen["secret"] = await recv(ws, "error")
        await ws.send(json.dumps({"op": "tail", "id": "s2", "topic": "secret"}))
        tail = await recv(ws, "error")
        assert tail["error"]["code"] == "NotAuthorized" and "consume" in tail["error"]["message"], tail
        await ws.send(json.dumps({"op": "publish", "req": "ps", "topic": "secret",
                                  "records": [{"value": "no"}]}))
        publish = await recv(ws, "error")
        assert publish["req"] == "ps" and publish["error"]["code"] == "NotAuthorized", publish
        await ws.send(json.dumps({"op": "ack", "req": "a", "handles": ["999.0.0.1"]}))
        answered = await recv(ws, "answered")
        assert answered["results"][0]["error"]["code"] == "UnknownSubscription", answered
        await ws.send(json.dumps({"op": "tail", "id": "t", "topic": "jobs", "from": "earliest"}))
        assert (await recv(ws, "record"))["value"] == "from python"

        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        seen["revoked"] = await recv(ws, "error", timeout=15)
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 15)
        except websockets.exceptions.ConnectionClosed:
            seen["closed"] = True
    print(json.dumps(seen), flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2]))
