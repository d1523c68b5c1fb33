"""Headless browsers playing a file from a test HTTP server, for tests of what browsers see.

``MediaServer`` serves a test page and media files on 127.0.0.1 (with byte ranges, as a browser
seeks with them) and collects what the page reports back (a JSON POST to ``/report``).
``Chromium`` runs Debian's ``chromium`` headless and drives it over the DevTools protocol on a
pipe (``--remote-debugging-pipe``: file descriptors 3 and 4, NUL-separated JSON; no port, no
extra client library); it enables the ``Media`` domain before navigating, so the media player's
own log (``Media.playerMessagesLogged``: what chrome://media-internals shows, such as "Failed to
reconcile encoded audio times with decoded output") is captured for the test to check.
``Firefox`` runs Debian's ``firefox-esr`` headless on a fresh profile that allows autoplay and
turns off what would reach out to the network; the page's report is all it gives.

Everything waits for a state with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import http.server
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

#: Chromium as root in a sandbox-less container, with nothing reaching out to the network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-debugging-pipe",
)

#: The page: plays ``file`` as ``<video src>`` (mode=src) or through Media Source Extensions,
#: the whole file appended to one SourceBuffer (mode=mse); reports the duration and buffered
#: ranges, seeks to the middle, plays until currentTime has advanced a second, then plays to the
#: end at 4x and reports. Any error is reported at once.
PAGE = """<!doctype html><html><body><script>
const q = new URLSearchParams(location.search);
const file = '/media/' + q.get('file'), mode = q.get('mode');
const r = {mode};
let sent = false;
function report(extra) {
  if (sent) return; sent = true;
  fetch('/report', {method: 'POST', body: JSON.stringify(Object.assign(r, extra || {}))});
}
function ranges(tr) {
  const out = [];
  for (let i = 0; i < tr.length; i++) out.push([tr.start(i), tr.end(i)]);
  return out;
}
const v = document.createElement('video');
document.body.appendChild(v);
v.onerror = () => report({error: 'video: ' + (v.error ? v.error.code + ' ' + v.error.message : '?')});
v.addEventListener('ended', () => { r.ended_at = v.currentTime; r.final_duration = v.duration; report(); });
v.addEventListener('loadedmetadata', () => {
  r.duration = v.duration;
  if (mode === 'src') seekToMiddle();
}, {once: true});
function seekToMiddle() {
  r.seek_target = v.duration / 2;
  v.addEventListener('seeked', () => {
    r.seeked_to = v.currentTime;
    v.play().then(() => {
      const from = v.currentTime;
      v.addEventListener('timeupdate', function tick() {
        if (v.currentTime >= from + 1.0) {
          v.removeEventListener('timeupdate', tick);
          r.advanced = [from, v.currentTime];
          v.playbackRate = 4;
        }
      });
    }, e => report({error: 'play: ' + e}));
  }, {once: true});
  v.currentTime = r.seek_target;
}
if (mode === 'src') {
  v.src = file;
} else {
  const ms = new MediaSource();
  v.src = URL.createObjectURL(ms);
  ms.addEventListener('sourceopen', async () => {
    try {
      const data = await (await fetch(file)).arrayBuffer();
      const sb = ms.addSourceBuffer('video/webm; codecs="vp8, opus"');
      sb.addEventListener('error', () => report({error: 'SourceBuffer error'}));
      sb.addEventListener('updateend', () => {
        r.buffered = ranges(sb.buffered);
        ms.endOfStream();
        if (r.buffered.length !== 1) report({error: 'buffered in pieces'});
        else seekToMiddle();
      }, {once: true});
      sb.appendBuffer(data);
    } catch (e) { report({error: 'mse: ' + e}); }
  }, {once: true});
}
</script></body></html>
"""


class MediaServer:
    """The page and the media files on 127.0.0.1; the page's reports in ``reports``."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = dict(files)
        self.reports: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/page.html":
                    self._send(200, PAGE.encode(), "text/html; charset=utf-8")
                    return
                name = path.removeprefix("/media/")
                if not path.startswith("/media/") or name not in server.files:
                    self._send(404, b"", "text/plain")
                    return
                data = server.files[name].read_bytes()
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes="):
                    first, _, last = ranged[6:].partition("-")
                    a = int(first or 0)
                    b = min(int(last), len(data) - 1) if last else len(data) - 1
                    headers = {"Accept-Ranges": "bytes", "Content-Range": f"bytes {a}-{b}/{len(data)}"}
                    self._send(206, data[a : b + 1], "video/webm", headers)
                else:
                    self._send(200, data, "video/webm", {"Accept-Ranges": "bytes"})

            def do_POST(self) -> None:
                body = self.rfile.read(min(int(self.headers.get("Content-Length", 0)), 1 << 20))
                with server._cond:
                    server.reports.append(json.loads(body))
                    server._cond.notify_all()
                self._send(204, b"", "text/plain")

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, file: str, mode: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/page.html?file={quote(file)}&mode={mode}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("chromium")
        if exe is None:
            raise RuntimeError("Debian's chromium is not installed (scripts/setup --test installs it)")
        profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=workdir)
        self.stderr_path = workdir / "chromium.stderr"
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_pipes() -> None:  # in the child, before exec: the protocol's fds 3 and 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=wire_pipes,
                pass_fds=(3, 4),
                start_new_session=True,  # its own process group: closed as a whole by our pid
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _send(self, method: str, params: dict[str, Any] | None, session: str | None) -> int:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        return self._next_id

    def _receive(self, deadline: float) -> dict[str, Any] | None:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if not ready:
                return None
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed the DevTools pipe (stderr: {self.stderr_path})")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        wanted = self._send(method, params, session)
        deadline = time.monotonic() + 30
        while True:
            msg = self._receive(deadline)
            if msg is None:
                raise TimeoutError(f"no answer to {method}")
            if msg.get("id") == wanted:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            self.events.append(msg)

    def drain(self) -> None:
        """Take in the events the browser has sent so far."""
        while (msg := self._receive(time.monotonic() + 0.05)) is not None:
            self.events.append(msg)

    def open_page(self, url: str) -> str:
        """Attach to the browser's tab, enable the Media domain, then navigate (so no player
        message is missed); returns the session id."""
        deadline = time.monotonic() + 30
        while True:
            pages = [t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page"]
            if pages:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("chromium opened no tab")
            self._receive(time.monotonic() + 0.2)  # wait for the browser to say something
        session: str = self.call("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True})[
            "sessionId"
        ]
        self.call("Media.enable", session=session)
        self.call("Page.navigate", {"url": url}, session=session)
        return session

    def media_messages(self, level: str | None = None) -> list[str]:
        self.drain()
        out = []
        for e in self.events:
            if e.get("method") == "Media.playerMessagesLogged":
                out += [m["message"] for m in e["params"]["messages"] if level is None or m["level"] == level]
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


#: Firefox preferences: autoplay allowed; no update, telemetry, safe-browsing or portal checks.
FIREFOX_PREFS = {
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "app.update.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "app.normandy.enabled": False,
    "extensions.update.enabled": False,
}


class Firefox:
    """A headless Firefox ESR opened at ``url``."""

    def __init__(self, workdir: Path, url: str) -> None:
        exe = shutil.which("firefox-esr") or shutil.which("firefox")
        if exe is None:
            raise RuntimeError("Debian's firefox-esr is not installed (scripts/setup --test installs it)")
        profile = Path(tempfile.mkdtemp(prefix="firefox-profile-", dir=workdir))
        (profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in FIREFOX_PREFS.items())
        )
        self.stderr_path = workdir / "firefox.stderr"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [exe, "--headless", "--no-remote", "--profile", str(profile), url],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )

    def drain(self) -> None:
        pass

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@contextmanager
def play(
    workdir: Path, files: dict[str, Path], file: str, mode: str, browser: str = "chromium", timeout: float = 90
) -> Iterator[tuple[dict[str, Any], Chromium | Firefox]]:
    """Play ``file`` (one of ``files``) in a fresh headless ``browser`` (chromium or firefox);
    yield the page's report and the browser (Chromium's holds its media messages)."""
    server = MediaServer(files)
    running: Chromium | Firefox | None = None
    try:
        if browser == "chromium":
            running = Chromium(workdir)
            running.open_page(server.url(file, mode))
        else:
            running = Firefox(workdir, server.url(file, mode))
        deadline = time.monotonic() + timeout
        while not server.reports:
            running.drain()  # keep the DevTools pipe flowing while the page plays
            if running.proc.poll() is not None:
                raise RuntimeError(f"{browser} exited with {running.proc.returncode} (stderr: {running.stderr_path})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page in {browser} sent no report in {timeout:.0f} s")
            with server._cond:
                server._cond.wait_for(lambda: bool(server.reports), 0.2)
        yield server.reports[0], running
    finally:
        if running is not None:
            running.close()
        server.close()
