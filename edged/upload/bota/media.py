"""Media for backends that want more than the WebM clip: an MP4, the audio track alone, JPEG stills.

From one verified clip part (VP8 + Opus WebM, timestamps in ms from its first keyframe):

- ``NAME.mp4``: the video re-encoded to H.264 (libx264, else libopenh264, else MPEG-4 part 2 when
  the FFmpeg at hand has no H.264 encoder) at the part's size and frame timing, the audio as AAC;
  ``+faststart`` so a player can start before the end arrives. Its bitrate follows the part's own
  (so it is about the part's size), and it is encoded again lower if it comes out over
  ``limits.MAX_UPLOAD_BYTES``.
- ``NAME-audio.webm``: the Opus packets copied unchanged into an audio-only WebM (no re-encode).
- ``NAME-still-<ms>ms.jpg``: the decoded frame nearest to each wanted time (ms into the part),
  encoded with FFmpeg's MJPEG encoder (full-range 4:2:0, as JPEG expects).

Off the recording path: :func:`derive` runs the work in a child process (``python -m edged.upload.bota.media``)
that lowers itself to the idle scheduling class (nice 19 where that is refused) and uses one
thread per codec, so encoding never competes with the recorder for a core or for the GIL. Every
output is written under a hidden temporary name, fsynced and renamed: a file with its final name
is complete, so a run cut off by a kill redoes only what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av

from edged.core import limits
from edged.core.files import atomic_path
from edged.core.priority import idle_process

MP4_TYPE = "video/mp4"
AUDIO_TYPE = "audio/webm"
STILL_TYPE = "image/jpeg"

#: H.264 encoders in order of preference; MPEG-4 part 2 (also valid in MP4) when none exists.
H264_ENCODERS = ("libx264", "libopenh264")
FALLBACK_ENCODER = "mpeg4"
#: x264's speed/size trade-off: "veryfast" costs a fraction of libvpx's realtime CPU at this size.
X264_PRESET = "veryfast"
#: Keyframe every this many seconds in the MP4 (seeking in a player).
MP4_KEYFRAME_S = 2
AAC_BITRATE = limits.TARGET_AUDIO_BITRATE
#: Lowest video bitrate an MP4 is encoded at (the camera's own lower bound).
MIN_VIDEO_BITRATE = 50_000
#: The MP4's video aims at this fraction of what the part's bytes allow (the MP4 box and AAC take the rest).
BITRATE_FILL = 0.9
#: MJPEG quantiser (2 best .. 31 worst): 3 is visually lossless at bodycam resolutions.
JPEG_QUALITY = 3
#: A derivation taking longer than this is cut off (a wedged encoder must not hold the uploader).
DERIVE_TIMEOUT_S = 900.0


class MediaError(Exception):
    """The part could not be turned into the wanted media (it does not decode, or an encoder failed)."""


@dataclass(frozen=True, slots=True)
class Derived:
    """The files made from one part; ``audio`` is None when the part has no audio track."""

    video: Path
    audio: Path | None
    stills: dict[int, Path]  # ms into the part → JPEG
    encoder: str


def video_encoder() -> str:
    """The MP4 video encoder this FFmpeg offers: H.264 if any, else MPEG-4 part 2."""
    for name in H264_ENCODERS:
        if name in av.codecs_available:
            try:
                av.codec.Codec(name, "w")
                return name
            except (av.FFmpegError, ValueError):
                continue
    return FALLBACK_ENCODER


def outputs(part: Path, out_dir: Path, still_ms: list[int]) -> Derived:
    """Where :func:`derive` puts the media of ``part`` (names depend on nothing else)."""
    stem = part.stem
    return Derived(
        out_dir / f"{stem}.mp4",
        _audio_path(part, out_dir),
        {ms: out_dir / f"{stem}-still-{ms}ms.jpg" for ms in sorted(set(still_ms))},
        "",
    )


def _audio_path(part: Path, out_dir: Path) -> Path:
    """Where the audio of ``part`` goes (``outputs().audio``, which is never None there)."""
    return out_dir / f"{part.stem}-audio.webm"


def _ms(frame: av.AudioFrame | av.VideoFrame) -> Fraction | None:
    """The frame's time in ms on its stream's clock, exact (None: the frame carries no time)."""
    if frame.pts is None or frame.time_base is None:
        return None
    return frame.pts * frame.time_base * 1000


def _open_checked(ctx: av.CodecContext, options: dict[str, str]) -> None:
    from edged.recording.encode import EncoderError
    from edged.recording.encode import _open_checked as open_checked

    try:
        open_checked(ctx, options)
    except EncoderError as exc:
        raise MediaError(str(exc)) from exc


# --- the audio track, copied ----------------------------------------------------------------------------


def audio_webm(src: Path, dst: Path) -> Path | None:
    """The part's Opus packets, unchanged, in an audio-only WebM. None: the part has no audio."""
    try:
        with av.open(str(src)) as inp:
            if not inp.streams.audio:
                return None
            ain = inp.streams.audio[0]
            with atomic_path(dst) as tmp, av.open(str(tmp), "w", format="webm") as out:
                aout = out.add_stream_from_template(ain)
                aout.codec_context.sample_rate = ain.codec_context.sample_rate
                aout.codec_context.layout = ain.codec_context.layout
                aout.codec_context.extradata = ain.codec_context.extradata
                aout.time_base = ain.time_base
                for p in inp.demux(ain):
                    if p.size == 0 or p.pts is None:
                        continue
                    p.stream = aout
                    out.mux(p)
    except av.FFmpegError as exc:
        raise MediaError(f"{src.name}: audio not copied: {exc}") from exc
    return dst


# --- stills --------------------------------------------------------------------------------------------


def stills(src: Path, wanted: dict[int, Path]) -> dict[int, Path]:
    """For each ms into the part, the nearest decoded frame as a JPEG. One decoding pass."""
    if not wanted:
        return {}
    best: dict[int, tuple[float, av.VideoFrame]] = {}
    last_ms = max(wanted)
    try:
        with av.open(str(src)) as inp:
            vs = inp.streams.video[0]
            vs.codec_context.thread_count = 1
            for frame in inp.decode(vs):
                at = _ms(frame)
                if at is None:
                    continue
                t = float(at)
                for ms in wanted:
                    if ms not in best or abs(t - ms) < best[ms][0]:
                        best[ms] = (abs(t - ms), frame)
                if t > last_ms and all(best[ms][0] <= abs(t - ms) for ms in wanted):
                    break  # frames only move further away from here on
            if not best:
                raise MediaError(f"{src.name}: no video frame decoded")
            for ms, path in wanted.items():
                _write_jpeg(best[ms][1], path)
    except av.FFmpegError as exc:
        raise MediaError(f"{src.name}: stills not made: {exc}") from exc
    return dict(wanted)


def _write_jpeg(frame: av.VideoFrame, dst: Path) -> None:
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height = frame.width, frame.height
    ctx.pix_fmt = "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    ctx.qmin = ctx.qmax = JPEG_QUALITY
    ctx.thread_count = 1
    _open_checked(ctx, {})
    # yuvj420p is full range: swscale expands the decoder's limited-range luma and chroma.
    image = frame.reformat(format="yuvj420p")
    image.pts = 0
    packets = ctx.encode(image) + ctx.encode(None)
    if not packets:
        raise MediaError("the JPEG encoder produced nothing")
    with atomic_path(dst) as tmp:
        tmp.write_bytes(b"".join(bytes(p) for p in packets))


# --- MP4 -------------------------------------------------------------------------------------------------


def to_mp4(src: Path, dst: Path, max_bytes: int = limits.MAX_UPLOAD_BYTES, encoder: str | None = None) -> str:
    """Re-encode ``src`` as an MP4 at most ``max_bytes``; returns the video encoder used."""
    encoder = encoder or video_encoder()
    with av.open(str(src)) as probe:
        seconds = max((probe.duration or 0) / 1e6, 0.1)
    budget = min(src.stat().st_size, max_bytes) * BITRATE_FILL
    for _ in range(4):
        bitrate = max(MIN_VIDEO_BITRATE, int(budget * 8 / seconds) - AAC_BITRATE)
        _encode_mp4(src, dst, encoder, bitrate)
        size = dst.stat().st_size
        if size <= max_bytes:
            return encoder
        budget *= 0.85 * max_bytes / size
        if bitrate == MIN_VIDEO_BITRATE:
            break
    dst.unlink(missing_ok=True)
    raise MediaError(f"{src.name}: the MP4 does not fit {max_bytes} bytes even at {MIN_VIDEO_BITRATE} bps")


def _video_stream(
    out: av.container.OutputContainer, encoder: str, vin: av.video.stream.VideoStream, bitrate: int
) -> av.video.stream.VideoStream:
    rate = vin.average_rate or vin.guessed_rate or Fraction(10)
    # A video encoder's name gives a video stream (the stubs type only literal names that way).
    vs = cast(av.video.stream.VideoStream, out.add_stream(encoder, rate=rate))
    ctx = vs.codec_context
    ctx.width, ctx.height = vin.codec_context.width, vin.codec_context.height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = Fraction(1, 1000)  # the part's own clock: frames keep their exact times
    ctx.framerate = rate
    ctx.bit_rate = bitrate
    ctx.gop_size = max(1, round(float(rate) * MP4_KEYFRAME_S))
    ctx.thread_count = 1
    vs.time_base = Fraction(1, 1000)
    # VBV: the rate holds within a second, so the size follows the bitrate.
    options = {"maxrate": str(bitrate), "bufsize": str(bitrate)}
    if encoder == "libx264":
        options["preset"] = X264_PRESET
    _open_checked(ctx, options)
    return vs


def _encode_mp4(src: Path, dst: Path, encoder: str, bitrate: int) -> None:
    try:
        with (
            av.open(str(src)) as inp,
            atomic_path(dst) as tmp,
            av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out,
        ):
            vin = inp.streams.video[0]
            vin.codec_context.thread_count = 1
            ain = inp.streams.audio[0] if inp.streams.audio else None
            vs = _video_stream(out, encoder, vin, bitrate)
            audio = _AacTrack(out, ain) if ain is not None else None
            for frame in inp.decode(*([vin] + ([ain] if ain is not None else []))):
                if isinstance(frame, av.VideoFrame):
                    at = _ms(frame)
                    if at is None:
                        continue
                    ms = round(at)
                    image = frame.reformat(format="yuv420p") if frame.format.name != "yuv420p" else frame
                    image.pts, image.time_base = ms, Fraction(1, 1000)
                    image.pict_type = av.video.frame.PictureType.NONE
                    out.mux(vs.encode(image))
                elif audio is not None and isinstance(frame, av.AudioFrame):  # the only other stream decoded
                    audio.add(frame)
            out.mux(vs.encode(None))
            if audio is not None:
                audio.flush()
    except av.FFmpegError as exc:
        raise MediaError(f"{src.name}: MP4 not made: {exc}") from exc


class _AacTrack:
    """Opus frames (60 ms) → AAC frames (1024 samples), timestamps continued from the first."""

    def __init__(self, out: av.container.OutputContainer, ain: av.audio.stream.AudioStream) -> None:
        c = ain.codec_context
        self.out, self.rate = out, c.sample_rate
        self.stream = out.add_stream("aac", rate=self.rate)
        ctx = self.stream.codec_context
        ctx.layout = c.layout
        ctx.bit_rate = AAC_BITRATE
        ctx.thread_count = 1
        _open_checked(ctx, {})
        self.resampler = av.AudioResampler(format="fltp", layout=c.layout, rate=self.rate, frame_size=ctx.frame_size)
        self.next_pts: int | None = None

    def add(self, frame: av.AudioFrame | None) -> None:
        if frame is not None and self.next_pts is None and frame.pts is not None and frame.time_base is not None:
            self.next_pts = round(frame.pts * frame.time_base * self.rate)
        for f in self.resampler.resample(frame):
            f.pts, f.time_base = self.next_pts or 0, Fraction(1, self.rate)
            self.next_pts = (self.next_pts or 0) + f.samples
            self.out.mux(self.stream.encode(f))

    def flush(self) -> None:
        self.add(None)
        self.out.mux(self.stream.encode(None))


# --- the work, off the recording path --------------------------------------------------------------------


def make(part: Path, out_dir: Path, still_ms: list[int], max_bytes: int = limits.MAX_UPLOAD_BYTES) -> Derived:
    """Make whatever of :func:`outputs` is missing, in this process. Returns what exists."""
    want = outputs(part, out_dir, still_ms)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = ""
    if not want.video.exists():
        encoder = to_mp4(part, want.video, max_bytes)
    audio_dst = _audio_path(part, out_dir)
    audio = audio_dst if audio_dst.exists() else audio_webm(part, audio_dst)
    missing = {ms: p for ms, p in want.stills.items() if not p.exists()}
    stills(part, missing)
    for path in [want.video, audio, *want.stills.values()]:
        if path is not None and path.stat().st_size > max_bytes:
            raise MediaError(f"{path.name}: {path.stat().st_size} bytes, over the {max_bytes}-byte limit")
    return Derived(want.video, audio, want.stills, encoder)


def derive(part: Path, out_dir: Path, still_ms: list[int], timeout_s: float = DERIVE_TIMEOUT_S) -> Derived:
    """:func:`make` in a low-priority child process; nothing to do when every output exists.
    Raises MediaError (the part cannot be converted) or OSError (the child could not run or was cut off)."""
    want = outputs(part, out_dir, still_ms)
    audio = _audio_path(part, out_dir)
    no_audio = out_dir / f".{part.stem}.no-audio"
    if want.video.exists() and all(p.exists() for p in want.stills.values()) and (audio.exists() or no_audio.exists()):
        return Derived(want.video, audio if audio.exists() else None, want.stills, "")
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [
        sys.executable,
        "-m",
        "edged.upload.bota.media",
        str(part),
        str(out_dir),
        *[f"--still-ms={ms}" for ms in want.stills],
    ]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as exc:
        raise OSError(f"making media from {part.name} took over {timeout_s:.0f} s; cut off") from exc
    if run.returncode == 2:
        raise MediaError(run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "media not made")
    if run.returncode != 0:
        raise OSError(f"media child for {part.name} exited {run.returncode}: {run.stderr.strip()[-300:]}")
    doc = json.loads(run.stdout)
    if doc["audio"] is None:
        no_audio.touch()
    return Derived(
        Path(doc["video"]),
        Path(doc["audio"]) if doc["audio"] else None,
        {int(k): Path(v) for k, v in doc["stills"].items()},
        doc["encoder"],
    )


def _lower_priority() -> None:
    """The idle scheduling class: this process runs only on time nobody else wants."""
    idle_process()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edged.upload.bota.media", description=__doc__.split("\n")[0])
    ap.add_argument("part", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--still-ms", type=int, action="append", default=[])
    ap.add_argument("--max-bytes", type=int, default=limits.MAX_UPLOAD_BYTES)
    args = ap.parse_args(argv)
    _lower_priority()
    try:
        d = make(args.part, args.out_dir, args.still_ms, args.max_bytes)
    except MediaError as exc:
        print(f"edged.upload.bota.media: {exc}", file=sys.stderr)
        return 2
    doc = {
        "video": str(d.video),
        "audio": str(d.audio) if d.audio else None,
        "stills": {str(k): str(v) for k, v in d.stills.items()},
        "encoder": d.encoder,
    }
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
