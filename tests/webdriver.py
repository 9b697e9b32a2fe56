"""A minimal W3C WebDriver client for Debian's chromedriver, over urllib: what the study page test needs
(navigate, find, type keys, run a script, reload, screenshot, the browser console), with no
third-party package. Selenium would pull in trio, whose hypothesis entry point breaks pytest's
session end where hypothesis is installed."""
from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# WebDriver's key code points (https://www.w3.org/TR/webdriver2/#keyboard-actions)
ENTER, ARROW_LEFT, ARROW_UP, ARROW_RIGHT, ARROW_DOWN = "\ue007", "\ue012", "\ue013", "\ue014", "\ue015"
_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriverError(RuntimeError):
    pass


class Element:
    def __init__(self, browser: Browser, ref: str):
        self.browser, self.ref = browser, ref

    def send_keys(self, *text: str) -> None:
        self.browser._cmd("POST", f"/element/{self.ref}/value", {"text": "".join(text)})


class Browser:
    """One headless Chromium driven by its own chromedriver process; `quit()` ends both."""

    def __init__(self, chromedriver: str, chromium: str, args: list[str]):
        self.port = _free_port()
        self.proc = subprocess.Popen([chromedriver, f"--port={self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if self._http("GET", "/status")["value"].get("ready"):
                    break
            except (OSError, WebDriverError):
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                raise WebDriverError("chromedriver did not start")
            time.sleep(0.05)
        caps = {"browserName": "chrome", "goog:chromeOptions": {"binary": chromium, "args": args},
                "goog:loggingPrefs": {"browser": "ALL"}}
        try:
            self.session = self._http("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["value"]["sessionId"]
        except BaseException:
            self.proc.kill()
            raise

    def _http(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            value = json.loads(err.read() or b"{}").get("value", {})
            raise WebDriverError(f"{method} {path}: {value.get('error')}: {str(value.get('message'))[:300]}") from None

    def _cmd(self, method: str, path: str, body: dict | None = None) -> Any:
        return self._http(method, f"/session/{self.session}{path}", body if body is not None or method == "GET" else {})["value"]

    # -- the subset of Selenium's API the tests use ----------------------------------------------
    def get(self, url: str) -> None:
        self._cmd("POST", "/url", {"url": url})

    def refresh(self) -> None:
        self._cmd("POST", "/refresh")

    def find_css(self, selector: str) -> Element:
        return Element(self, self._cmd("POST", "/element", {"using": "css selector", "value": selector})[_ELEMENT])

    def execute_script(self, script: str, *args: Any) -> Any:
        return self._cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def get_screenshot_as_png(self) -> bytes:
        return base64.b64decode(self._cmd("GET", "/screenshot"))

    def get_log(self, kind: str = "browser") -> list[dict]:
        """chromedriver's console log (entries since the last call): level, message, timestamp."""
        return self._cmd("POST", "/se/log", {"type": kind})

    def quit(self) -> None:
        try:
            self._http("DELETE", f"/session/{self.session}")
        except (OSError, WebDriverError):
            pass
        finally:
            self.proc.kill()
            self.proc.wait(10)


def wait(browser: Browser, what: str, cond, timeout: float = 20, poll: float = 0.05):
    """`cond(browser)` until truthy; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond(browser)
            if value:
                return value
        except WebDriverError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll)


def chromium_args(user_data_dir: Path) -> list[str]:
    return ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,900",
            f"--user-data-dir={user_data_dir}", "--autoplay-policy=no-user-gesture-required"]
