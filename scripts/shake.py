#!/usr/bin/env python3
"""Make high-motion test footage: real camera footage shaken like a walking wearer's bodycam.

The footage (../shared/footage/) is looped, a moving crop (two sines per axis, 1.3 + 7.1 Hz
horizontally, 1.9 + 4.3 Hz vertically: body sway and steps) is scaled to 960x540 at 10 fps and
temporal sensor noise is added (strength 6; 20 is the low-light "stress" case). The result is
written once as raw YUV (y4m) and cached, so every encoder under test reads identical frames and
reading them costs next to nothing (decoding a compressed source would dominate the CPU figures).
Needs the ffmpeg command line (the benchmarks' baseline anyway).

    python scripts/shake.py --seconds 180 --noise 6 [--footage vtest.avi] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOOTAGE = REPO.parent / "shared" / "footage"

CROP = ("crop=w=iw*0.8:h=ih*0.8:"
        "x=(iw-ow)/2*(1+0.6*sin(2*PI*1.3*t)+0.3*sin(2*PI*7.1*t)):"
        "y=(ih-oh)/2*(1+0.6*sin(2*PI*1.9*t)+0.3*sin(2*PI*4.3*t))")


def shaken(seconds: float, noise: int = 6, footage: str = "vtest.avi", out_dir: Path = REPO / "bench-out",
           width: int = 960, height: int = 540, fps: int = 10) -> Path:
    """Path of the shaken footage, made on first use."""
    src = FOOTAGE / footage
    if not src.exists():
        raise FileNotFoundError(f"footage {src} not found (see ../shared/footage/README.md)")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"shake-{Path(footage).stem}-{int(seconds)}s-n{noise}-{width}x{height}@{fps}.y4m"
    if out.exists():
        return out
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("the ffmpeg command line is needed: apt-get install ffmpeg")
    tmp = out.with_suffix(".tmp.y4m")
    vf = f"fps={fps},{CROP},scale={width}:{height},noise=alls={noise}:allf=t,format=yuv420p"
    subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-stream_loop", "-1", "-i", str(src), "-t", str(seconds),
                    "-vf", vf, "-an", "-f", "yuv4mpegpipe", str(tmp)], check=True)
    tmp.rename(out)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--noise", type=int, default=6)
    ap.add_argument("--footage", default="vtest.avi")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out")
    args = ap.parse_args()
    print(shaken(args.seconds, args.noise, args.footage, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
