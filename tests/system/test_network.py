"""Network awareness with real kernel events: veth pairs and a network namespace made by the test.

The contract server runs inside its own network namespace; the uploader can reach it only once a
veth pair links the two. Nothing outside this machine is involved.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edged.config import schema as config
from edged.upload.network import LinkWatch, probe, usable_interfaces
from edged.upload.outbox import PRIORITY_MARK, Outbox
from edged.upload.policy import RetryPolicy
from edged.upload.targets import build_targets
from edged.upload.uploader import Uploader
from tests.support import wait_until
from tests.support.upload import ACCOUNT, make_webm

REPO = Path(__file__).resolve().parents[2]
TAG = f"{os.getpid() % 100000}"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture(scope="module", autouse=True)
def need_net_admin():
    if not shutil.which("ip"):
        pytest.skip("iproute2 (ip) not installed")
    probe_name = f"edq{TAG}"
    r = ip("link", "add", probe_name, "type", "veth", "peer", "name", f"edr{TAG}", check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot create interfaces here (CAP_NET_ADMIN?): {r.stderr.strip()}")
    ip("link", "del", probe_name, check=False)


@pytest.fixture
def veth():
    names = (f"eda{TAG}", f"edb{TAG}")
    yield names
    ip("link", "del", names[0], check=False)


def test_a_new_interface_wakes_the_watch_at_once(veth):
    seen: list[str] = []
    w = LinkWatch(on_change=seen.append)
    w.start()
    try:
        assert w.source != "poll", "kernel events are available here"
        assert w.wait(0.3) is False, "nothing happened yet"
        t0 = time.monotonic()
        ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        assert w.wait(2.0), "interface added: woken within 2 s"
        latency = time.monotonic() - t0
        # A veth pair is two interfaces: the watch may wake on the peer's event before this one's.
        wait_until(lambda: any(veth[0] in s for s in seen), 2, f"an event naming {veth[0]}: {seen}")
        ip("link", "set", veth[0], "up")
        ip("link", "set", veth[1], "up")
        ip("addr", "add", "10.213.77.1/30", "dev", veth[0])
        wait_until(lambda: any(f"address added {veth[0]}" in s for s in seen), 2, "address event")
        wait_until(lambda: veth[0] in usable_interfaces(), 2, "veth usable")
        assert "lo" not in usable_interfaces()
        ip("link", "del", veth[0])
        wait_until(
            lambda: any(s.startswith(("remove", "link removed")) and veth[0] in s for s in seen), 2, "removal event"
        )
        print(f"\nlink event latency {latency * 1000:.1f} ms via {w.source}")
    finally:
        w.stop()


def test_the_watch_costs_nothing_while_idle():
    w = LinkWatch()
    w.start()
    try:
        time.sleep(0.2)
        tid = w._thread.native_id
        stat = Path(f"/proc/self/task/{tid}/stat")

        def cpu_ticks() -> int:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime + stime

        before = cpu_ticks()
        woke = w.wait(2.0)
        used_s = (cpu_ticks() - before) / os.sysconf("SC_CLK_TCK")
    finally:
        w.stop()
    assert not woke or w.changes() > 0
    assert used_s < 0.05, f"the watch thread used {used_s:.2f} s of CPU in 2 s idle"


def test_udev_stands_in_where_rtnetlink_cannot_be_opened(veth, monkeypatch):
    """rtnetlink is the one source where it opens (udev would only repeat its interface events);
    where it cannot be opened, udev's (or the kernel's) uevents still wake the watch."""
    import edged.upload.network as network

    w = LinkWatch()
    w.start()
    try:
        assert w.source == "netlink"
    finally:
        w.stop()

    real = network.socket.socket

    def no_rtnetlink(family: int = -1, *args: object, **kw: object) -> socket.socket:
        if family == socket.AF_NETLINK:
            raise PermissionError(1, "rtnetlink refused (test)")
        return real(family, *args, **kw)

    monkeypatch.setattr(network.socket, "socket", no_rtnetlink)
    seen: list[str] = []
    w = LinkWatch(on_change=seen.append)
    w.start()
    try:
        assert w.source in ("udev", "kernel"), w.source
        ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        assert w.wait(2.0), "interface added: woken within 2 s"
        wait_until(lambda: any(veth[0] in s for s in seen), 2, f"an event naming {veth[0]}: {seen}")
    finally:
        w.stop()


def test_the_poll_fallback_sees_interfaces_too(veth, monkeypatch):
    import edged.upload.network as network

    monkeypatch.setattr(network, "POLL_S", 0.2)
    w = LinkWatch(_force_poll=True)
    w.start()
    try:
        assert w.source == "poll"
        ip("link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        assert w.wait(2.0)
    finally:
        w.stop()


def test_probe():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert probe("127.0.0.1", port, 1.0)
    assert not probe("127.0.0.1", port, 1.0), "closed port"


# --- the uploader resumes when a link appears ------------------------------------------------------


@pytest.fixture
def netns():
    ns = f"edns{TAG}"
    ip("netns", "add", ns)
    ip("-n", ns, "link", "set", "lo", "up")
    yield ns
    ip("netns", "del", ns, check=False)


def test_uploads_resume_within_2_s_of_a_link_appearing(tmp_path, netns, veth):
    host_if, ns_if = veth
    port = 18000 + int(TAG) % 1000
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            sys.executable,
            str(REPO / "tests" / "contract" / "sonoran_server.py"),
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--key",
            "test-key=free",
            "--store-dir",
            str(tmp_path / "received"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    # This test subnet has no way out until the veth exists (the container's default route would
    # otherwise swallow the packets and turn "no network" into a slow connect timeout).
    ip("route", "add", "unreachable", "10.213.78.0/24")
    try:
        assert server.stdout.readline().startswith("READY")
        key = tmp_path / "api.key"
        key.write_text("test-key")
        s = config.from_mapping(
            {
                "storage": {"dir": str(tmp_path / "state")},
                "upload": {
                    "targets": ["sonoran_v2"],
                    "retry_base_seconds": 60.0,
                    "retry_cap_seconds": 600.0,
                    "sonoran_v2": {
                        "base_url": f"http://10.213.78.2:{port}",
                        "api_key_file": str(key),
                        "account_uuid": ACCOUNT,
                    },
                },
            }
        )
        outbox = Outbox(tmp_path / "outbox.sqlite", targets=s.upload.targets)
        clip = make_webm(tmp_path / "c-part01.webm")
        outbox.enqueue(
            "c",
            [(1, clip, clip.stat().st_size, 1000, hashlib.sha256(clip.read_bytes()).hexdigest())],
            PRIORITY_MARK,
            time.time_ns(),
        )
        # Seeded so that the first back-off is long: only the link event can bring the retry early.
        up = Uploader(outbox, build_targets(s), RetryPolicy.from_settings(s.upload, random.Random(0)))
        watch = LinkWatch(on_change=up.on_link_change)
        watch.start()
        up.start()
        try:
            wait_until(lambda: outbox.deliveries()[0].state == "deferred", 10, "first attempt: no route")
            d = outbox.deliveries()[0]
            assert "cannot connect" in d.reason and d.wait_net
            assert (d.next_try_ns - time.time_ns()) / 1e9 > 20, "the timer alone would wait long"
            cpu0 = time.process_time()
            time.sleep(3.0)  # offline: nothing may spin
            idle_cpu = time.process_time() - cpu0
            assert outbox.deliveries()[0].attempts == 1, "no request while offline"
            assert idle_cpu < 0.15, f"{idle_cpu:.2f} s CPU in 3 s offline"
            # The link appears: a veth pair into the server's namespace, addressed and up.
            ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            ip("link", "set", ns_if, "netns", netns)
            ip("-n", netns, "addr", "add", "10.213.78.2/30", "dev", ns_if)
            ip("-n", netns, "link", "set", ns_if, "up")
            ip("addr", "add", "10.213.78.1/30", "dev", host_if)
            ip("link", "set", host_if, "up")
            t_link = time.monotonic()
            wait_until(lambda: outbox.deliveries()[0].state == "delivered", 10, "delivered after the link appeared")
            resumed = time.monotonic() - t_link
        finally:
            up.stop()
            watch.stop()
        assert resumed < 2.0, f"resumed {resumed:.2f} s after the link came up"
        print(f"\nresumed {resumed * 1000:.0f} ms after the link came up; offline CPU {idle_cpu * 1000:.0f} ms in 3 s")
        assert (tmp_path / "received" / f"{outbox.deliveries()[0].part.sha256}.webm").read_bytes() == clip.read_bytes()
    finally:
        ip("route", "del", "unreachable", "10.213.78.0/24", check=False)
        server.terminate()
        server.wait(10)
