"""Doctor's checks of the hardware: camera, microphone, GPIO, GPS (through gpsd)."""

from __future__ import annotations

import fcntl
import glob
import importlib.util
import os
import re
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.capture.gps import probe
from edged.config.schema import AudioSettings, CameraSettings, GpioSettings, GpsSettings
from edged.core.states import GpsFix
from edged.doctor import FAIL, OK, WARN, Check, Host

# linux/videodev2.h: VIDIOC_QUERYCAP = _IOR('V', 0, struct v4l2_capability), 104 bytes.
VIDIOC_QUERYCAP = 0x80685600
_V4L2_CAPABILITY = struct.Struct("=16s32s32sIII12x")  # driver, card, bus_info, version, capabilities, device_caps
_CAP_VIDEO_CAPTURE, _CAP_VIDEO_CAPTURE_MPLANE, _CAP_DEVICE_CAPS = 0x1, 0x1000, 0x80000000

NO_CAMERA_FIX = (
    "connect a camera: a Pi camera's ribbon cable (`rpicam-hello --list-cameras` lists it; "
    "apt install python3-picamera2) or a USB camera"
)


# --- camera ------------------------------------------------------------------------------------


def check_camera(cam: CameraSettings, host: Host) -> Check:
    if cam.source == "synthetic":
        return Check(
            "camera",
            WARN,
            "camera.source = synthetic: a test pattern is recorded, not a camera",
            'set camera.source = "auto" on a bodycam',
        )
    if cam.source == "file":
        there = os.access(cam.device, os.R_OK)
        return Check(
            "camera",
            WARN if there else FAIL,
            f"camera.source = file: {cam.device} is looped"
            if there
            else f"camera.source = file: {cam.device} cannot be read",
            'set camera.source = "auto" on a bodycam',
        )
    found: list[str] = []
    unusable: Check | None = None  # a Pi camera that is there but cannot record
    if cam.source in ("auto", "picamera2"):
        cameras, why = picamera2_cameras(host)
        if cameras:
            check = check_picamera2_opens(cam, host)
            if check.status != FAIL or cam.source == "picamera2":
                return check
            unusable = check
            found.append(f"picamera2: {check.summary}")
        else:
            found.append(f"picamera2: {why}")
            if cam.source == "picamera2":
                return Check("camera", FAIL, f"camera.source = picamera2 but {why}", NO_CAMERA_FIX)
    devices, denied = v4l2_capture_devices(host, cam.device if cam.source == "v4l2" and cam.device else None)
    if devices:
        path, card = devices[0]
        more = f" (and {len(devices) - 1} more)" if len(devices) > 1 else ""
        if unusable is not None:
            return Check(
                "camera", WARN, f"V4L2 camera {card} at {path}{more} will record; {unusable.summary}", unusable.fix
            )
        return Check("camera", OK, f"V4L2 camera {card} at {path}{more}")
    if unusable is not None:
        return Check("camera", FAIL, f"{unusable.summary}: the synthetic test pattern would be recorded", unusable.fix)
    if denied:
        return Check(
            "camera",
            WARN,
            f"{', '.join(denied)}: uid {os.geteuid()} may not open it, so it is unverified",
            "run doctor as root (the service gets the video group from its unit)",
        )
    found.append("no V4L2 capture device" + (f" {cam.device}" if cam.source == "v4l2" and cam.device else ""))
    if cam.source == "v4l2":
        return Check("camera", FAIL, f"camera.source = v4l2 but {'; '.join(found)}", NO_CAMERA_FIX)
    return Check(
        "camera",
        WARN,
        f"no camera found ({'; '.join(found)}): the synthetic test pattern will be recorded",
        NO_CAMERA_FIX,
    )


def picamera2_cameras(host: Host) -> tuple[list[dict[str, Any]], str]:
    """Raspberry Pi (not USB) cameras libcamera lists, or why there are none."""
    try:
        module = host.import_picamera2() if host.import_picamera2 else _import_picamera2()
        cameras = module.Picamera2.global_camera_info()
    except Exception as exc:  # noqa: BLE001 - ImportError, libcamera failing: say why
        return [], str(exc)
    csi = [c for c in cameras if "/usb" not in c.get("Id", "")]  # USB cameras are the v4l2 source's
    if csi:
        return csi, ""
    return [], (
        "libcamera lists no Raspberry Pi camera"
        + (f" (only USB: {', '.join(c.get('Model', '?') for c in cameras)})" if cameras else "")
    )


def _import_picamera2() -> Any:
    from edged.capture.picam import _import_picamera2 as load

    return load()


def check_picamera2_opens(cam: CameraSettings, host: Host) -> Check:
    """Opens the camera as the recorder does (``PicameraVideo``: the same configuration) and waits
    for a first frame, within ``host.camera_wait`` seconds: a camera libcamera lists may still
    refuse the stream, be held by another process, or never deliver."""
    from edged.capture.picam import CameraInUse, PicameraVideo

    module = host.import_picamera2() if host.import_picamera2 else _import_picamera2()
    source = PicameraVideo(cam.width, cam.height, cam.fps, picamera2_module=module)
    outcome: dict[str, Any] = {}

    def attempt() -> None:
        t0 = time.monotonic()
        try:
            source.open()
            try:
                source.read()
                outcome["first_frame_s"] = time.monotonic() - t0
            finally:
                source.close()
        except Exception as exc:  # noqa: BLE001 - whatever the camera stack raises is the finding
            outcome["error"] = exc

    worker = threading.Thread(target=attempt, name="doctor-camera", daemon=True)
    worker.start()
    worker.join(host.camera_wait)
    asked = f"{cam.width}x{cam.height}@{cam.fps}"
    name = f"Raspberry Pi camera {source.model} (picamera2)"
    if worker.is_alive():
        return Check(
            "camera",
            FAIL,
            f"{name} did not open and deliver a frame at {asked} within {host.camera_wait:g} s",
            "check the ribbon cable and `rpicam-hello -t 2000`; the camera stack hangs",
        )
    error = outcome.get("error")
    if isinstance(error, CameraInUse):
        return Check(
            "camera",
            WARN,
            f"{name} is listed, but not checked: {error}",
            "run doctor while the service is stopped (systemctl stop edged) to open the camera",
        )
    if error is not None:
        return Check("camera", FAIL, f"{name} cannot record at {asked}: {error}", NO_CAMERA_FIX)
    stream = source.stream
    size = "x".join(str(v) for v in stream.get("size", ()))
    return Check(
        "camera",
        OK,
        f"{name}: opened as the recorder opens it, {stream.get('format')} {size} for {asked}, "
        f"first frame in {outcome['first_frame_s'] * 1000:.0f} ms",
    )


def v4l2_capture_devices(host: Host, only: str | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """(path, card name) of every V4L2 node that can capture video (codecs and ISPs, which are
    memory-to-memory, are not cameras), and the nodes this user may not open."""
    if only:
        paths = [only]
    else:
        from edged.capture.v4l2 import DEVICE_GLOBS

        paths = [p for pattern in (host.video_globs or DEVICE_GLOBS) for p in sorted(glob.glob(pattern), key=_natural)]
    seen: set[str] = set()
    devices, denied = [], []
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except PermissionError:
            denied.append(path)
            continue
        except OSError:
            continue
        try:
            raw = fcntl.ioctl(fd, VIDIOC_QUERYCAP, bytes(_V4L2_CAPABILITY.size))
        except OSError:  # ENOTTY: not a V4L2 device
            continue
        finally:
            os.close(fd)
        _, card, _, _, caps, device_caps = _V4L2_CAPABILITY.unpack(raw)
        caps = device_caps if caps & _CAP_DEVICE_CAPS else caps
        if caps & (_CAP_VIDEO_CAPTURE | _CAP_VIDEO_CAPTURE_MPLANE):
            devices.append((path, card.split(b"\0", 1)[0].decode(errors="replace")))
    return devices, denied


def _natural(path: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


# --- microphone --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pcm:
    card: int
    device: int
    name: str
    capture: bool


def alsa_pcms(pcm_file: Path) -> list[Pcm]:
    """/proc/asound/pcm: ``CC-DD: id : name : playback N : capture N`` per PCM device."""
    try:
        text = pcm_file.read_text()
    except OSError:  # no sound cards (or no ALSA)
        return []
    out = []
    for line in text.splitlines():
        m = re.match(r"(\d+)-(\d+): ([^:]*) : ([^:]*)(.*)", line)
        if m:
            out.append(Pcm(int(m[1]), int(m[2]), m[4].strip() or m[3].strip(), "capture" in m[5]))
    return out


def check_microphone(audio: AudioSettings, host: Host) -> Check:
    if audio.source == "none":
        return Check("microphone", OK, "audio.source = none: video only")
    if audio.source == "synthetic":
        return Check(
            "microphone",
            WARN,
            "audio.source = synthetic: a test tone is recorded, not a microphone",
            'set audio.source = "auto" on a bodycam',
        )
    pcms = alsa_pcms(host.asound_pcm)
    capture = [p for p in pcms if p.capture]
    if not capture:
        where = "no ALSA capture device" + ("" if pcms else f" ({host.asound_pcm}: no sound card)")
        fix = "plug a USB microphone or an I2S microphone HAT (`arecord -l` lists capture devices)"
        if audio.source == "alsa":
            return Check("microphone", FAIL, f"audio.source = alsa but {where}", fix)
        return Check("microphone", WARN, f"{where}: a synthetic tone will be recorded", fix)
    names = ", ".join(f"hw:{p.card},{p.device} {p.name}" for p in capture)
    wanted = _card_of(audio.device)
    if wanted is None and audio.device == "default":
        wanted = (0, None)  # without a sound server, ALSA's default is card 0
    if wanted is not None and not any(p.card == wanted[0] and wanted[1] in (None, p.device) for p in capture):
        first = capture[0]
        return Check(
            "microphone",
            WARN,
            f'audio.device = "{audio.device}" cannot record (card {wanted[0]} has no '
            f"capture device); capture devices: {names}",
            f'set audio.device = "plughw:{first.card},{first.device}"',
        )
    denied = [
        n
        for p in capture
        if (n := host.snd_dir / f"pcmC{p.card}D{p.device}c").exists() and not os.access(n, os.R_OK | os.W_OK)
    ]
    if denied:
        return Check(
            "microphone",
            WARN,
            f"capture devices {names}; uid {os.geteuid()} may not open {', '.join(map(str, denied))}",
            "run doctor as root (the service gets the audio group from its unit)",
        )
    return Check("microphone", OK, f'ALSA capture: {names} (audio.device = "{audio.device}")')


def _card_of(device: str) -> tuple[int, int | None] | None:
    """(card, device) of ``hw:1,0``, ``plughw:1``, ``hw:CARD=1,DEV=0``; None for names."""
    m = re.fullmatch(r"(?:plug)?hw:(?:CARD=)?(\d+)(?:,(?:DEV=)?(\d+))?", device)
    return (int(m[1]), int(m[2]) if m[2] else None) if m else None


# --- GPIO --------------------------------------------------------------------------------------


def check_gpio(gpio: GpioSettings, host: Host) -> Check:
    pins = {
        k: v
        for k, v in (("button_pin", gpio.button_pin), ("led_pin", gpio.led_pin), ("buzzer_pin", gpio.buzzer_pin))
        if v
    }
    if not pins:
        return Check("gpio", OK, "no GPIO pins configured (no button, LED or buzzer)")
    listed = ", ".join(f"gpio.{k} = {v}" for k, v in pins.items())
    chips = sorted(glob.glob(host.gpiochip_glob), key=_natural)
    if not chips:
        return Check(
            "gpio",
            FAIL,
            f"{listed} but no GPIO chip ({host.gpiochip_glob}) exists",
            "on a Pi check the kernel (ls /dev/gpiochip*); elsewhere leave the gpio pins empty",
        )
    if not os.access(chips[0], os.R_OK | os.W_OK):
        return Check(
            "gpio",
            WARN,
            f"{listed}; uid {os.geteuid()} may not open {chips[0]}",
            "run doctor as root (the service gets the gpio group from its unit)",
        )
    if importlib.util.find_spec("lgpio") is None:
        return Check(
            "gpio",
            WARN,
            f"{listed}; {', '.join(chips)} present, but lgpio (gpiozero's pin driver "
            "on Raspberry Pi OS) is not importable",
            "sudo apt install python3-lgpio (the venv sees system packages)",
        )
    return Check("gpio", OK, f"{listed}: {', '.join(chips)}")


# --- GPS ---------------------------------------------------------------------------------------

NO_GPSD_FIX = (
    'sudo apt install gpsd; name the receiver in /etc/default/gpsd (DEVICES="/dev/ttyACM0"); '
    "sudo systemctl enable --now gpsd.socket; or set gps.host/gps.port to where gpsd listens"
)
NO_FIX_FIX = (
    "check the receiver is attached and seen by gpsd (`gpspipe -w -n 5`, `cgps`) and has open sky; "
    "a cold start takes minutes"
)


def check_gps(gps: GpsSettings, host: Host) -> Check:
    """Connects to gpsd as the daemon does (``edged.capture.gps``) and waits a few seconds for a fix.
    Warnings only: edged records without a position, saying "no fix" wherever one would be."""
    if not gps.enabled:
        return Check("gps", OK, "off (gps.enabled = false): marks and clips carry no position")
    status = probe(gps.host, gps.port, gps.stale_seconds, host.gps_wait)
    release = f"gpsd {status.release} " if status.release else "gpsd "
    if status.fix in (GpsFix.FIX_2D, GpsFix.FIX_3D):
        return Check("gps", OK, f"{status.fix} fix at {status.lat:.6f},{status.lon:.6f} ({release}at {status.gpsd})")
    if status.fix == GpsFix.NO_FIX:
        said = (
            f"{status.reports} position reports without a fix"
            if status.reports
            else f"no position report in {host.gps_wait:g} s (no receiver?)"
        )
        why = f"; {status.problem}" if status.problem else ""
        return Check("gps", WARN, f"{release}at {status.gpsd} answers, but no fix: {said}{why}", NO_FIX_FIX)
    return Check("gps", WARN, f"no gpsd at {status.gpsd}: {status.problem or 'no answer'}", NO_GPSD_FIX)
