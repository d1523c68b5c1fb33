"""Capture: camera and microphone sources behind one small interface (see ``base``).

``open_video`` / ``open_audio`` build the configured source; ``auto`` tries the real devices
first and falls back to the synthetic source, logging which one it picked and why the others
were passed over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edged.capture.base import AudioSample, AudioSource, SourceError, SourceUnavailable, VideoSample, VideoSource
from edged.config.schema import AudioSettings, CameraSettings

log = logging.getLogger("edged.capture")

__all__ = [
    "AudioSample",
    "AudioSource",
    "SourceError",
    "SourceUnavailable",
    "VideoSample",
    "VideoSource",
    "video_factory",
    "audio_factory",
    "open_video",
    "open_audio",
]


def _picamera2(cam: CameraSettings) -> VideoSource:
    from edged.capture.picam import PicameraVideo

    return PicameraVideo(cam.width, cam.height, cam.fps)


def _v4l2(cam: CameraSettings) -> VideoSource:
    from edged.capture.v4l2 import V4L2Video

    return V4L2Video(cam.device or None, cam.width, cam.height, cam.fps)


def _synthetic_video(cam: CameraSettings) -> VideoSource:
    from edged.capture.synthetic import SyntheticVideo

    return SyntheticVideo(cam.width, cam.height, cam.fps, paced=cam.paced)


def _file(cam: CameraSettings) -> VideoSource:
    from edged.capture.file import FileVideo

    return FileVideo(cam.device, cam.width, cam.height, cam.fps, paced=cam.paced)


_VIDEO: dict[str, Callable[[CameraSettings], VideoSource]] = {
    "picamera2": _picamera2,
    "v4l2": _v4l2,
    "synthetic": _synthetic_video,
    "file": _file,
}
_VIDEO_AUTO = ("picamera2", "v4l2", "synthetic")


def _alsa(aud: AudioSettings, paced: bool) -> AudioSource:
    from edged.capture.alsa import AlsaAudio

    return AlsaAudio(aud.device, aud.sample_rate, aud.channels)


def _synthetic_audio(aud: AudioSettings, paced: bool) -> AudioSource:
    from edged.capture.synthetic import SyntheticAudio

    return SyntheticAudio(aud.sample_rate, aud.channels, paced=paced)


_AUDIO: dict[str, Callable[[AudioSettings, bool], AudioSource]] = {"alsa": _alsa, "synthetic": _synthetic_audio}
_AUDIO_AUTO = ("alsa", "synthetic")


def video_factory(cam: CameraSettings) -> Callable[[], VideoSource]:
    """A callable that opens the configured camera (resolving ``auto`` on each call)."""

    def make() -> VideoSource:
        names = _VIDEO_AUTO if cam.source == "auto" else (cam.source,)
        return _open_first(names, lambda n: _VIDEO[n](cam), "camera")

    return make


def audio_factory(aud: AudioSettings, paced: bool) -> Callable[[], AudioSource] | None:
    if aud.source == "none":
        return None

    def make() -> AudioSource:
        names = _AUDIO_AUTO if aud.source == "auto" else (aud.source,)
        return _open_first(names, lambda n: _AUDIO[n](aud, paced), "microphone")

    return make


def _open_first(names: tuple[str, ...], build: Callable[[str], object], what: str):
    reasons = []
    for name in names:
        try:
            source = build(name)
            source.open()  # type: ignore[attr-defined]
        except (SourceUnavailable, ImportError) as exc:
            reasons.append(f"{name}: {exc}")
            continue
        if len(names) > 1:
            log.info("%s: using %s source (%s)", what, name, "; ".join(reasons) or "first choice")
        return source
    raise SourceUnavailable(f"no {what} source could be opened: " + "; ".join(reasons))


def open_video(cam: CameraSettings) -> VideoSource:
    return video_factory(cam)()


def open_audio(aud: AudioSettings, paced: bool) -> AudioSource | None:
    factory = audio_factory(aud, paced)
    return factory() if factory else None
