"""Load a report in headless Chromium and check it: no console errors, every image loaded.

Talks the Chrome DevTools protocol over `--remote-debugging-pipe` (JSON messages ending in NUL
on file descriptors 3 and 4, the transport Puppeteer's `pipe: true` uses), so it needs neither a
websocket library nor chromedriver. The browser runs in its own process group with a throwaway
profile and is killed with its whole group at the end, whatever happened.

    python -m medmax_cli.report.browser demo-out/report/index.html --screenshot demo-out/report.png
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)
# Runs in the page once it has loaded: what the check asserts on.
PROBE = """JSON.stringify({
  title: document.title,
  sections: Array.from(document.querySelectorAll('section[id]')).map(s => s.id),
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                                 naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,
                                                 width: i.width, height: i.height})),
  height: document.documentElement.scrollHeight
})"""


class BrowserError(RuntimeError):
    pass


def find_browser() -> str | None:
    env = os.environ.get("MEDMAX_CHROMIUM")
    if env:
        return env
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    url: str
    title: str = ""
    sections: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    browser_pid: int = 0  # its process group is gone when check_page returns

    @property
    def broken_images(self) -> list[str]:
        return [str(i["src"]) for i in self.images if not i["complete"] or i["naturalWidth"] <= 0]

    @property
    def distorted_images(self) -> list[str]:
        """Images drawn at another aspect ratio than their own (more than a pixel of rounding off)."""
        out = []
        for i in self.images:
            nw, nh, w, h = (i.get(k) or 0 for k in ("naturalWidth", "naturalHeight", "width", "height"))
            if (
                nw > 0
                and nh > 0
                and w > 0
                and h > 0
                and abs(w - h * nw / nh) > 1.5
                and abs(h - w * nh / nw) > 1.5
            ):
                out.append(f"{i['src']} drawn {w}x{h}, natural {nw}x{nh}")
        return out

    def problems(self, required_sections: tuple[str, ...] = ()) -> list[str]:
        out = [f"console: {e}" for e in self.console_errors]
        out += [f"image did not load: {src}" for src in self.broken_images]
        out += [f"image stretched: {d}" for d in self.distorted_images]
        out += [f"section missing: {s}" for s in required_sections if s not in self.sections]
        return out


class _Pipe:
    """CDP over the browser's pipe: send a command, read messages until its answer comes."""

    def __init__(self, write_fd: int, read_fd: int, deadline: float):
        self.out = os.fdopen(write_fd, "wb", buffering=0)
        self.inp = os.fdopen(read_fd, "rb", buffering=0)
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.deadline = deadline

    def _read_message(self) -> dict[str, Any]:
        import select

        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("the browser did not answer in time")
            ready, _, _ = select.select([self.inp], [], [], left)
            if not ready:
                continue
            chunk = self.inp.read(65536)
            if not chunk:
                raise BrowserError("the browser closed its debugging pipe (did it crash?)")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.out.write(json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._read_message()
            if event.get("method") == method:
                return event
            self.events.append(event)

    def close(self) -> None:
        for handle in (self.out, self.inp):
            try:
                handle.close()
            except OSError:
                pass


def _console_errors(events: list[dict[str, Any]]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            errors.append(str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(
                " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            )
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"{entry.get('text')} {entry.get('url', '')}".strip())
    return errors


def check_page(
    page: Path,
    *,
    screenshot: Path | None = None,
    browser: str | None = None,
    width: int = 1200,
    max_height: int = 2400,
    timeout: float = 60.0,
) -> PageCheck:
    """Open `page` from disk, wait for load, probe the DOM, collect errors, optionally screenshot."""
    browser = browser or find_browser()
    if browser is None:
        raise BrowserError("no Chromium found (apt-get install chromium, or set MEDMAX_CHROMIUM)")
    url = page.resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="medmax-chromium-")
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def child_fds() -> None:  # the browser reads commands on fd 3 and answers on fd 4
        import fcntl

        high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)  # out of the way of 3 and 4 first
        high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.dup2(high_r, 3)
        os.dup2(high_w, 4)

    proc = subprocess.Popen(
        [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},900", "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=child_fds,  # noqa: PLW1509 - only dup2 between fork and exec
        start_new_session=True,  # its own process group: killed whole at the end
        close_fds=False,
    )
    os.close(to_browser_r)
    os.close(from_browser_w)
    pipe = _Pipe(to_browser_w, from_browser_r, time.monotonic() + timeout)
    result = PageCheck(url=url, browser_pid=proc.pid)
    try:
        targets = pipe.call("Target.getTargets")["targetInfos"]
        page_target = next(t for t in targets if t["type"] == "page")
        session = pipe.call("Target.attachToTarget", {"targetId": page_target["targetId"], "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            pipe.call(f"{domain}.enable", session=session)
        pipe.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        pipe.events.clear()
        pipe.call("Page.navigate", {"url": url}, session=session)
        pipe.wait_for("Page.loadEventFired")
        probe = json.loads(
            pipe.call("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=session)[
                "result"
            ]["value"]
        )
        result.title, result.sections, result.images = probe["title"], probe["sections"], probe["images"]
        if screenshot is not None:
            height = min(int(probe["height"]), max_height)
            pipe.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            shot = pipe.call("Page.captureScreenshot", {"format": "png"}, session=session)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            tmp = screenshot.with_name(f".{screenshot.name}.tmp")
            tmp.write_bytes(base64.b64decode(shot["data"]))
            tmp.replace(screenshot)
            result.screenshot = screenshot
        result.console_errors = _console_errors(pipe.events)
        try:
            pipe.call("Browser.close")
        except BrowserError:
            pass
    finally:
        pipe.close()
        _stop(proc)
        shutil.rmtree(profile, ignore_errors=True)
    return result


def live_group_members(pgid: int) -> list[int]:
    """Processes of a process group that still run (zombies awaiting their reaper do not count)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            alive.append(int(entry.name))
    return alive


def _stop(proc: subprocess.Popen) -> None:
    """End the browser and every process it started (same process group)."""
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=5)
            time.sleep(0.1)
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while live_group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


REQUIRED_SECTIONS = ("run", "stages", "curation", "gallery", "training", "evaluation")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Check a medmax report in headless Chromium.")
    parser.add_argument("page", type=Path)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--max-height", type=int, default=2400, help="Screenshot height cap in pixels.")
    parser.add_argument(
        "--if-available", action="store_true", help="Exit 0 with a note when no Chromium exists."
    )
    args = parser.parse_args(argv)
    if find_browser() is None and args.if_available:
        print("report check: no Chromium here; skipped (apt-get install chromium)", file=sys.stderr)
        return 0
    try:
        check = check_page(args.page, screenshot=args.screenshot, max_height=args.max_height)
    except BrowserError as exc:
        print(f"report check: {exc}", file=sys.stderr)
        return 1
    problems = check.problems(REQUIRED_SECTIONS)
    for problem in problems:
        print(f"report check: {problem}", file=sys.stderr)
    print(
        f"report check: {len(check.images)} images loaded, sections {', '.join(check.sections)}, "
        f"{len(check.console_errors)} console errors"
        + (f"; screenshot {check.screenshot}" if check.screenshot else ""),
        file=sys.stderr,
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
