"""Drives Herald's management page in a real headless Chromium over the DevTools protocol.

Usage: page_cdp.py CHROMIUM PAGE_URL TOKEN SCREENSHOT

Starts Chromium with a DevTools port, opens the page, logs in with the token through the
login form, follows topic `orders` in the live tail, publishes a message through the form,
and waits until the message shows in the tail and the lag of group `orders/workers` has
grown by one. Saves a screenshot (PNG), prints one JSON line of what it saw, exits 0, or
raises.
"""

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Page:
    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0

    async def send(self, method, **params):
        self.next_id += 1
        me = self.next_id
        await self.ws.send(json.dumps({"id": me, "method": method, "params": params}))
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
            if message.get("id") == me:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def eval(self, expression):
        result = await self.send("Runtime.evaluate", expression=expression,
                                 awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression, what, timeout=30):
        """Waits for `expression` to be truthy. Until then it may also throw: right after
        Page.navigate the old document (about:blank) is still the one evaluated in."""
        deadline = time.monotonic() + timeout
        failed = None
        while time.monotonic() < deadline:
            try:
                value = await self.eval(expression)
                if value:
                    return value
            except RuntimeError as err:
                failed = err
            await asyncio.sleep(0.2)
        body = await self.eval("document.body ? document.body.innerText : ''")
        raise AssertionError(
            f"no {what} within {timeout} s (last error: {failed}); the page says:\n{body}")


async def main(chromium, url, token, screenshot):
    port = free_port()
    profile = tempfile.mkdtemp()
    browser = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
         "--window-size=1280,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
                    targets = [t for t in json.load(r) if t["type"] == "page"]
                if targets:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("Chromium's DevTools did not come up")
            time.sleep(0.2)
        async with websockets.connect(targets[0]["webSocketDebuggerUrl"], max_size=None) as ws:
            page = Page(ws)
            await page.send("Page.enable")
            await page.send("Page.navigate", url=url)
            seen = {}
            # Without credentials the page asks for them.
            await page.until("!document.getElementById('login-box').classList.contains('hidden')",
                             "login form")
            await page.eval(f"""
                document.getElementById('token').value = {json.dumps(token)};
                document.getElementById('login').requestSubmit();""")
            await page.until("!!document.querySelector('#groups tr[data-group=\"orders/workers\"]')",
                             "groups table")
            lag = "Number(document.querySelector('#groups tr[data-group=\"orders/workers\"] .lag').textContent)"
            seen["lag_before"] = await page.eval(lag)
            seen["topics"] = await page.eval(
                "[...document.querySelectorAll('#topics tr')].map(r => r.dataset.topic)")
            await page.eval("""
                document.getElementById('tail-topic').value = 'orders';
                document.getElementById('tail-form').requestSubmit();""")
            await page.until("document.getElementById('tail-state').textContent.startsWith('following')",
                             "tail")
            await asyncio.sleep(0.5)  # the stream's first bytes are in
            await page.eval("""
                document.getElementById('publish-topic').value = 'orders';
                document.getElementById('publish-value').value = 'hello from the page';
                document.getElementById('publish').requestSubmit();""")
            seen["published"] = await page.until(
                "document.getElementById('published').textContent", "publish answer")
            seen["tail"] = await page.until(
                "[...document.querySelectorAll('#tail li')].map(l => l.textContent)"
                ".find(t => t.includes('hello from the page'))", "the record in the tail")
            seen["lag_after"] = await page.until(
                f"{lag} > {seen['lag_before']} && {lag}", "the lag to grow")
            seen["summary"] = await page.eval("document.getElementById('summary').textContent")
            shot = await page.send("Page.captureScreenshot", format="png")
            with open(screenshot, "wb") as out:
                out.write(base64.b64decode(shot["data"]))
            print(json.dumps(seen), flush=True)
    finally:
        browser.kill()
        browser.wait()


asyncio.run(main(*sys.argv[1:5]))
