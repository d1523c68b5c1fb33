"""The local control socket: how ``edged mark`` (and other commands) reach the running daemon.

A Unix stream socket in the state folder, owner-only (0600, created under umask 077). One JSON
request per connection, one JSON answer: ``{"cmd": "mark", "note": "..."}`` →
``{"ok": true, "event_id": "...", ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("edged.control")

Handler = Callable[[dict[str, Any]], dict[str, Any]]
MAX_REQUEST = 64 * 1024


class ControlError(Exception):
    """The daemon could not be reached or refused the request."""


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.path.unlink(missing_ok=True)  # a stale socket from a crash (the state lock is ours)
        handlers = self.handlers

        class _Handle(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline(MAX_REQUEST)
                try:
                    request = json.loads(line)
                    handler = handlers.get(request.get("cmd", ""))
                    if handler is None:
                        answer = {"ok": False, "error": f"unknown command {request.get('cmd')!r}"}
                    else:
                        answer = {"ok": True} | handler(request)
                except (ValueError, AttributeError) as exc:
                    answer = {"ok": False, "error": f"bad request: {exc}"}
                except Exception as exc:  # noqa: BLE001 - answer, log, and keep serving
                    log.exception("control command failed")
                    answer = {"ok": False, "error": str(exc)}
                self.wfile.write(json.dumps(answer).encode() + b"\n")

        old = os.umask(0o077)
        try:
            self._server = _Server(str(self.path), _Handle)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:  # storage gone read-only: shutting down must go on
            log.warning("control socket %s not removed: %s", self.path, exc)


def request(path: Path, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one command to the daemon at ``path``; raise ControlError with a clear reason."""
    if not path.exists():
        raise ControlError(f"edged is not running (no control socket at {path})")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            raise ControlError(f"edged is not running (control socket {path}: {exc.strerror})") from exc
        except PermissionError as exc:
            raise ControlError(f"not allowed to reach edged at {path} (run as the daemon's user)") from exc
        s.sendall(json.dumps(payload).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data or b"{}")
    if not answer.get("ok"):
        raise ControlError(answer.get("error", "no answer from edged"))
    return answer
