"""Network awareness for the uploader: wake up when a link appears, never spin while offline.

Event-driven (one ``select`` on a kernel socket and a stop pipe):
- **rtnetlink** (stdlib ``AF_NETLINK``): interfaces appearing or vanishing (a Wi-Fi dongle, an
  LTE modem, Ethernet plugged in: ``RTM_NEWLINK`` / ``RTM_DELLINK``), links going up or down and
  addresses added or removed, which produce no uevents (a Wi-Fi association, DHCP giving an
  address). It sees everything the uploader waits for.
- **pyudev** (net subsystem), only where rtnetlink cannot be opened: interfaces appearing or
  vanishing. With udevd running it listens to udev's processed events, otherwise to the kernel's
  uevents directly. Not opened beside rtnetlink: it would only repeat its interface events, and
  importing it (ctypes, libudev, a ``subprocess`` for ``ldconfig``) was a tenth of edged's start.
If neither can be opened (a locked-down container), it falls back to comparing
``/sys/class/net`` every ``POLL_S`` seconds.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("edged.network")

POLL_S = 5.0
_SYS_NET = Path("/sys/class/net")

# rtnetlink (linux/rtnetlink.h, linux/if_link.h)
_RTMGRP_LINK, _RTMGRP_IPV4_IFADDR, _RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
_RTM_NEWLINK, _RTM_DELLINK, _RTM_NEWADDR, _RTM_DELADDR = 16, 17, 20, 21
_IFLA_IFNAME = 3
_IFF_UP, _IFF_RUNNING = 0x1, 0x40
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTA = struct.Struct("=HH")


def _ifname(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return f"if{index}"


def parse_rtnetlink(data: bytes) -> list[str]:
    """Describe each link/address message in one netlink datagram, e.g. "link up eth0"."""
    out = []
    off = 0
    while off + _NLMSG.size <= len(data):
        length, mtype, _, _, _ = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size:
            break
        body = off + _NLMSG.size
        if mtype in (_RTM_NEWLINK, _RTM_DELLINK) and body + _IFINFO.size <= off + length:
            _, _, index, flags, _ = _IFINFO.unpack_from(data, body)
            name = _ifname(index)
            a = body + _IFINFO.size
            while a + _RTA.size <= off + length:  # the IFLA_IFNAME attribute names it even when gone
                alen, atype = _RTA.unpack_from(data, a)
                if alen < _RTA.size:
                    break
                if atype == _IFLA_IFNAME:
                    name = data[a + _RTA.size : a + alen].split(b"\0", 1)[0].decode(errors="replace")
                a += (alen + 3) & ~3
            if mtype == _RTM_DELLINK:
                out.append(f"link removed {name}")
            else:
                up = flags & _IFF_UP and flags & _IFF_RUNNING
                out.append(f"link {'up' if up else 'down'} {name}")
        elif mtype in (_RTM_NEWADDR, _RTM_DELADDR) and body + _IFADDR.size <= off + length:
            index = _IFADDR.unpack_from(data, body)[4]
            out.append(f"address {'added' if mtype == _RTM_NEWADDR else 'removed'} {_ifname(index)}")
        off += (length + 3) & ~3
    return out


def _snapshot() -> dict[str, str]:
    snap = {}
    try:
        for d in _SYS_NET.iterdir():
            try:
                snap[d.name] = (d / "operstate").read_text().strip()
            except OSError:
                snap[d.name] = "?"
    except OSError:
        pass
    return snap


class LinkWatch:
    """Wakes waiters when network interfaces appear/disappear or links/addresses change."""

    def __init__(self, on_change: Callable[[str], None] | None = None, *, _force_poll: bool = False) -> None:
        self.on_change = on_change
        self._force_poll = _force_poll
        self._cond = threading.Condition()
        self._changes = 0
        self._seen = 0
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._udev: Any = None  # a pyudev.Monitor (pyudev has no type information)
        self._rtnl: socket.socket | None = None
        self._sources: list[str] = []

    @property
    def source(self) -> str:
        return "+".join(self._sources) or "poll"

    def _open(self) -> None:
        if self._force_poll:
            return
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            s.bind((0, _RTMGRP_LINK | _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR))
            s.setblocking(False)
            self._rtnl = s
            self._sources.append("netlink")
            return
        except OSError as exc:
            log.warning("network: rtnetlink unavailable (%s); trying udev", exc)
        try:
            import pyudev

            ctx = pyudev.Context()
            kind = "udev" if Path("/run/udev/control").exists() else "kernel"
            mon = pyudev.Monitor.from_netlink(ctx, source=kind)
            mon.filter_by("net")
            mon.start()
            self._udev = mon
            self._sources.append(kind)
        except Exception as exc:  # noqa: BLE001 - no udev here either: the poll still works
            log.warning("network: udev events unavailable (%s)", exc)

    def start(self) -> None:
        self._open()
        if not self._sources:
            log.warning("network: no kernel events; looking at %s every %.0f s", _SYS_NET, POLL_S)
        self._thread = threading.Thread(target=self._run, name="linkwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        self._thread = None
        if self._rtnl:
            self._rtnl.close()
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)

    def _changed(self, what: str) -> None:
        log.debug("network: %s", what)
        with self._cond:
            self._changes += 1
            self._cond.notify_all()
        if self.on_change:
            try:
                self.on_change(what)
            except Exception:
                log.exception("network change handler failed")

    def _run(self) -> None:
        fds = (
            [self._stop_r]
            + ([self._udev.fileno()] if self._udev else [])
            + ([self._rtnl.fileno()] if self._rtnl else [])
        )
        poll_only = len(fds) == 1
        snap = _snapshot() if poll_only else {}
        while True:
            ready, _, _ = select.select(fds, [], [], POLL_S if poll_only else None)
            if self._stop_r in ready:
                return
            if poll_only:
                now = _snapshot()
                for name in sorted(set(now) | set(snap)):
                    if now.get(name) != snap.get(name):
                        self._changed(f"{name} {snap.get(name, 'absent')} → {now.get(name, 'absent')}")
                snap = now
                continue
            if self._udev and self._udev.fileno() in ready:
                while (dev := self._udev.poll(timeout=0)) is not None:
                    self._changed(f"{dev.action} {dev.sys_name}")
            if self._rtnl and self._rtnl.fileno() in ready:
                while True:
                    try:
                        data = self._rtnl.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:  # ENOBUFS: events were dropped; something changed
                        self._changed(f"netlink overrun ({exc.strerror})")
                        break
                    for what in parse_rtnetlink(data):
                        self._changed(what)

    def wait(self, timeout: float) -> bool:
        """Block until a change happened since the previous wait() that returned True (or since
        start), or the timeout; True if a change."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self._changes > self._seen, timeout)
            self._seen = self._changes
            return bool(ok)

    def changes(self) -> int:
        return self._changes


def usable_interfaces() -> list[str]:
    """Non-loopback interfaces that are up (or "unknown" with carrier, e.g. tun, ppp, wwan)."""
    out = []
    for name, state in sorted(_snapshot().items()):
        if name == "lo":
            continue
        if state == "up":
            out.append(name)
        elif state == "unknown":
            try:
                if (_SYS_NET / name / "carrier").read_text().strip() == "1":
                    out.append(name)
            except OSError:
                pass
    return out


def probe(host: str, port: int, timeout: float = 2.0) -> bool:
    """Cheap reachability check: a TCP connection opens (and is closed at once). Never raises."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
