"""Upload fixtures shared by the contract, daemon, system and hostile tests: a real VP8 WebM made
with PyAV, an outbox filled with such parts, settings naming the contract server, and the
accelerated clock the uploader and the contract server share (30 requests per rolling minute and
the 24 h allowance run on it); ``Rig``, an outbox and its uploader on that clock."""

from __future__ import annotations

import hashlib
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from edged.config import schema as config
from edged.upload.outbox import PRIORITY_MARK, Outbox
from edged.upload.policy import RetryPolicy
from edged.upload.targets import build_targets
from edged.upload.uploader import Uploader
from tests.contract.sonoran_server import SonoranServer

ACCOUNT = "4b1c6f2e-8f9a-4a57-9a43-2d9a3c1b0e11"


class ScaledClock:
    """Wall time running ``scale`` times faster than real time, jumpable (both sides use it)."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self._t0, self._m0 = time.time(), time.monotonic()
        self.offset = 0.0

    def now(self) -> float:
        return self._t0 + (time.monotonic() - self._m0) * self.scale + self.offset

    def now_ns(self) -> int:
        return int(self.now() * 1e9)

    def jump(self, seconds: float) -> None:
        self.offset += seconds


def make_webm(path: Path, frames: int = 10, size: int = 64, noise_bytes: int = 0) -> Path:
    """A real VP8 WebM; ``noise_bytes`` pads it with an attachment-free big first frame of noise."""
    with av.open(str(path), "w", format="webm") as c:
        s = c.add_stream("libvpx", rate=10)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        if noise_bytes:
            s.bit_rate = noise_bytes * 8
            s.options = {"crf": "4", "qmin": "0", "qmax": "4"}
        rng = np.random.default_rng(len(path.name))
        for i in range(frames):
            img = (
                rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                if noise_bytes
                else np.full((size, size, 3), (i * 20) % 255, np.uint8)
            )
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 10)
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def enqueue(
    outbox: Outbox,
    clip_dir: Path,
    clip_id: str,
    n_parts: int = 1,
    duration_ms: int = 1000,
    priority: int = PRIORITY_MARK,
    event_wall_ns: int = 0,
    **webm,
) -> list[Path]:
    clip_dir = clip_dir / clip_id
    clip_dir.mkdir(parents=True, exist_ok=True)
    files = [make_webm(clip_dir / f"{clip_id}-part{n:02d}.webm", **webm) for n in range(1, n_parts + 1)]
    outbox.enqueue(
        clip_id,
        [
            (n, f, f.stat().st_size, duration_ms, hashlib.sha256(f.read_bytes()).hexdigest())
            for n, f in enumerate(files, 1)
        ],
        priority,
        event_wall_ns or time.time_ns(),
    )
    return files


def settings(
    tmp_path: Path, targets: list[str], server: SonoranServer | None = None, key: str = "test-key", **upload
) -> config.Settings:
    key_file = tmp_path / "api.key"
    key_file.write_text(key + "\n")
    url = server.url if server else "http://127.0.0.1:9"
    data = {
        "device": {"unit_number": "1A-12", "unit_location": "Senora Fwy / Route 68"},
        "storage": {"dir": str(tmp_path / "state")},
        "upload": {
            "targets": targets,
            "retry_base_seconds": 0.2,
            "retry_cap_seconds": 2.0,
            "sonoran_v2": {"base_url": url, "api_key_file": str(key_file), "account_uuid": ACCOUNT, "ident_id": 7},
            "sonoran_legacy": {
                "base_url": url,
                "community": "comm-1",
                "account": ACCOUNT,
                "session_id": "sess-1",
                "username": "Officer",
            },
            "directory": {"path": str(tmp_path / "delivered")},
        }
        | upload,
    }
    return config.from_mapping(data, origin="<test>")


class Rig:
    """An outbox, its uploader and the clock they share; stopped at the end of the test."""

    def __init__(self, tmp_path: Path, s: config.Settings, clock: ScaledClock, seed: int = 1) -> None:
        import random

        self.settings, self.clock, self.tmp = s, clock, tmp_path
        self.outbox = Outbox(tmp_path / "outbox.sqlite", targets=s.upload.targets, now_ns=clock.now_ns)
        self.delivered: list[str] = []
        self.alarms: dict[str, bool] = {}
        self.uploader = Uploader(
            self.outbox,
            build_targets(s),
            RetryPolicy.from_settings(s.upload, random.Random(seed)),
            now_ns=clock.now_ns,
            on_delivered=self.delivered.append,
            on_alarm=self.alarms.__setitem__,
            time_scale=clock.scale,
        )

    def add(self, clip_id: str, **kw) -> list[Path]:
        return enqueue(self.outbox, self.tmp / "clips", clip_id, **kw)

    def states(self, target: str | None = None) -> list[str]:
        return [d.state for d in self.outbox.deliveries(target=target)]

    def settled(self) -> bool:
        return all(s in ("delivered", "failed") for s in self.states())

    def __enter__(self) -> Rig:
        self.uploader.start()
        return self

    def __exit__(self, *exc) -> None:
        self.uploader.stop()  # the outbox stays open for the test to read
