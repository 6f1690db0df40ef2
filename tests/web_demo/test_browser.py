"""`python -m internlm task=web_demo` as a user meets it: the real Streamlit server on loopback and
headless Chromium (Debian's `chromium`) that types a message, waits for the reply and takes a
screenshot. Chromium is driven over its DevTools protocol with a plain websocket (no playwright)."""

from __future__ import annotations

import base64
import io
import itertools
import json
import shutil
import subprocess
import sys
import time

import httpx
import pytest
from PIL import Image
from websockets.sync.client import connect

from tests.serve.conftest import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: apt-get install -y chromium")


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


class DevTools:
    """Just enough of the Chrome DevTools protocol: commands on one page target."""

    def __init__(self, websocket_url: str):
        self.socket = connect(websocket_url, max_size=None, open_timeout=10)
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        call_id = next(self.ids)
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:  # events arrive in between; skip them
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("id") == call_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


@pytest.fixture
def demo_server(demo_run, tmp_path):
    port = free_port()
    log = open(tmp_path / "demo.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "internlm", "task=web_demo", f"checkpoint={demo_run}", f"task.port={port}",
         "task.device=cpu", "task.max_length=96", f"hydra.run.dir={tmp_path / 'run'}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is not None or answers(f"{url}/_stcore/health"), 60, "Streamlit to start")
        assert process.poll() is None, (tmp_path / "demo.log").read_text()
        yield url
    finally:
        process.terminate()  # the task passes SIGTERM on to Streamlit
        assert process.wait(timeout=30) == 0, (tmp_path / "demo.log").read_text()


@pytest.fixture
def browser(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1280,900", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        targets = wait_for(lambda: answers(f"http://127.0.0.1:{port}/json/version")
                           and [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"],
                           30, "Chromium's DevTools endpoint")
        tools = DevTools(targets[0]["webSocketDebuggerUrl"])
        yield tools
        tools.socket.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


MESSAGES = "document.querySelectorAll('[data-testid=\"stChatMessage\"]')"


def test_chromium_sees_a_streamed_reply_and_screenshots_it(demo_server, browser, tmp_path):
    browser.call("Page.enable")
    browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
    browser.call("Page.navigate", url=demo_server)
    wait_for(lambda: browser.js("!!document.querySelector('textarea')"), 90, "the chat input (model loaded)")
    page_text = browser.js("document.body.innerText")
    assert page_text.count("Max Length") == 1 and "96" in page_text  # the slider starts at task.max_length
    browser.js("document.querySelector('textarea').focus()")
    browser.call("Input.insertText", text="你好, InternLM")
    for kind in ("keyDown", "keyUp"):
        browser.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)

    def reply() -> str | None:
        texts = browser.js(f"Array.from({MESSAGES}).map(m => m.innerText)")
        state = browser.js("document.querySelector('[data-testid=\"stApp\"]').getAttribute('data-test-script-state')")
        done = len(texts) == 2 and "▌" not in texts[1] and state != "running"  # the cursor goes when the reply ends
        return texts[1] if done else None

    answer = wait_for(reply, 120, "the assistant's reply")
    assert "你好, InternLM" in browser.js(f"{MESSAGES}[0].innerText")
    assert answer.strip()

    shot = tmp_path / "web_demo.png"
    shot.write_bytes(base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"]))
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert image.size == (1280, 900)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, sidebar and avatars: not a blank page
    target = tmp_path.parent / "web_demo_screenshot.png"  # kept for a human look after the run
    shutil.copy(shot, target)
