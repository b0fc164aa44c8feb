"""A real headless Chromium for the page tests, driven over the DevTools protocol on a pipe.

Chromium's `--remote-debugging-pipe` reads JSON commands on fd 3 and writes replies and events on fd 4, each ended
by a NUL byte, so no driver binary, port or websocket package is needed: Debian's `chromium` is the only install
(.ci/run adds it when missing). Under CI (CI set) a missing browser fails the tests instead of skipping them.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

import pytest

EXECUTABLES = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_S = 30


def find_chromium() -> str:
    """The browser's path; a failure under CI, else a skip that says how to install it."""
    found = next((path for path in map(shutil.which, EXECUTABLES) if path), None)
    if found:
        return found
    message = "no chromium on PATH: apt-get install -y chromium (.ci/run does)"
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(message)
    pytest.skip(message)


class Browser:
    """One Chromium process with one page; `open` a URL, `evaluate` JavaScript in it, read its console errors."""

    def __init__(self, executable: str):
        self.profile = tempfile.mkdtemp(prefix="sft-chromium-")
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # Copies above fd 10 first, so that placing them on 3 and 4 in the child never overwrites the other one.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_read, replies_write)]

        def on_fds_3_and_4():
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        arguments = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                     "--no-first-run", "--disable-extensions", f"--user-data-dir={self.profile}", "about:blank"]
        self.process = subprocess.Popen(arguments, preexec_fn=on_fds_3_and_4, pass_fds=(3, 4),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in (commands_read, replies_write, *high):
            os.close(fd)
        self._buffer, self._next_id, self.events = b"", 0, []
        target = self._send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self._send(f"{domain}.enable", session=True)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if not select.select([self._replies], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def _send(self, method: str, params: dict | None = None, session: bool = False) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _wait_for(self, method: str) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            found = next((e for e in self.events if e.get("method") == method), None)
            if found:
                self.events.remove(found)
                return found
            self.events.append(self._message(deadline))

    def open(self, url: str) -> None:
        """Load `url` and wait for its load event; the page's console errors start afresh."""
        self.events.clear()
        self._send("Page.navigate", {"url": url}, session=True)
        self._wait_for("Page.loadEventFired")

    def console_errors(self) -> list[str]:
        """Uncaught exceptions, console.error calls and browser errors (a CSP refusal, a failed load) so far."""
        self.evaluate("0")  # lets any event the page sent arrive first
        errors = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                errors.append(params["entry"].get("text", ""))
        return errors

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-able values)."""
        result = self._send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        for fd in (self._commands, self._replies):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)
