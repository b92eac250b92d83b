"""Subscribes to push group GROUP of TOPIC over a WebSocket with a window of PREFETCH
(default COUNT), takes COUNT deliveries without answering them, says so on stdout, and
waits to be killed.

Usage: ws_hold.py URL TOPIC GROUP COUNT [PREFETCH]
"""

import asyncio
import json
import sys

import websockets


async def main(url, topic, group, count, prefetch):
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"op": "subscribe", "id": "s", "topic": topic,
                                  "group": group, "prefetch": prefetch}))
        held = 0
        while held < count:
            message = json.loads(await ws.recv())
            if message["op"] == "delivery":
                held += 1
        print(f"held {held}", flush=True)
        await asyncio.sleep(3600)


count = int(sys.argv[4])
prefetch = int(sys.argv[5]) if len(sys.argv) > 5 else count
asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], count, prefetch))
