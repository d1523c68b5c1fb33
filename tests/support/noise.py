"""Noise frames: the encoder spends its whole bitrate on them, as on real footage (tests of what
segments write, where a static synthetic picture would encode to almost nothing)."""

from __future__ import annotations

import av
import numpy as np


def noisy_frames(n: int, width: int, height: int) -> list[av.VideoFrame]:
    rng = np.random.default_rng(15)
    return [
        av.VideoFrame.from_ndarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), format="rgb24")
        for _ in range(n)
    ]
