"""edged doctor: each check against real conditions where this machine can make them (tmpfs
mounts, key files and their modes, network namespaces, a listening socket, the kernel clock),
through the command line for the exit code and JSON; fakes only for what cannot exist here
(a camera, a sound card, systemd as PID 1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edged import doctor
from edged.core.clock import SystemClock
from edged.doctor import FAIL, OK, WARN, Host
from tests.support import reachable, tmpfs

REPO = Path(__file__).resolve().parents[2]
SECRET = "sk-live-0123456789abcdef"


def write_config(tmp_path: Path, body: str = "", state: Path | None = None) -> Path:
    state = state or tmp_path / "state"
    path = tmp_path / "edged.toml"
    path.write_text(f'[storage]\ndir = "{state}"\nmin_free_bytes = 0\nmax_bytes = 10000000\n' + textwrap.dedent(body))
    return path


def no_camera_host(tmp_path: Path, **kw) -> Host:
    """No picamera2, and 'video' nodes that are not V4L2 devices (a file, /dev/null)."""
    fake = tmp_path / "video0"
    fake.write_bytes(b"not a camera")

    def no_picamera2():
        raise ImportError("No module named 'picamera2'")

    return Host(
        import_picamera2=no_picamera2, video_globs=(str(fake), "/dev/null"), asound_pcm=tmp_path / "no-asound-pcm", **kw
    )


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


def edged_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edged", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})),
        timeout=120,
    )


# --- command line, JSON, exit code ---------------------------------------------------------------


def test_cli_json_lists_every_check_and_exit_code_follows_failures(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    out = edged_cli("doctor", "--config", str(cfg), "--json", cwd=tmp_path)
    report = json.loads(out.stdout)
    names = [c["name"] for c in report["checks"]]
    assert names == [
        *("config", "storage", "credentials", "camera", "microphone", "gpio", "gps"),
        *("clock", "network", "systemd"),
    ]
    for c in report["checks"]:
        assert c["status"] in (OK, WARN, FAIL) and c["summary"]
        assert c["status"] == OK or c["fix"], c  # anything not ok says what to do
    failed = any(c["status"] == FAIL for c in report["checks"])
    assert report["ok"] is not failed and out.returncode == (1 if failed else 0)
    assert by_name([doctor.Check(**c) for c in report["checks"]])["config"].status == OK

    text = edged_cli("doctor", "--config", str(cfg), cwd=tmp_path)
    assert text.returncode == out.returncode
    assert text.stdout.splitlines()[0].startswith("ok    config")
    assert "edged doctor:" in text.stdout.splitlines()[-1]


def test_bad_config_names_the_keys_and_fails(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[camera]\nfps = 0\n")
    cfg.write_text(cfg.read_text().replace("min_free_bytes = 0\n", "min_free_bytes = 0\nsizee = 1\n"))
    out = edged_cli("doctor", "--config", str(cfg), "--json", cwd=tmp_path)
    assert out.returncode == 1
    checks = by_name([doctor.Check(**c) for c in json.loads(out.stdout)["checks"]])
    assert checks["config"].status == FAIL
    assert "camera.fps: must be at least 1" in checks["config"].summary
    assert "storage.sizee: unknown key" in checks["config"].summary
    assert "edged config check" in checks["config"].fix
    assert checks["storage"].summary.startswith("not checked")
    assert {"camera", "microphone", "clock", "network", "systemd"} <= set(checks)  # the rest still run


def test_missing_config_file(tmp_path: Path) -> None:
    checks = by_name(doctor.run(tmp_path / "absent.toml", no_camera_host(tmp_path)))
    assert checks["config"].status == FAIL and "not found" in checks["config"].summary
    assert "--config" in checks["config"].fix


def test_service_config_gets_the_units_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert doctor.service_env(Path("/etc/edged/edged.toml")) == {
        "STATE_DIRECTORY": "/var/lib/edged",
        "CREDENTIALS_DIRECTORY": "/etc/edged/credentials",
    }
    assert doctor.service_env(Path("configs/edged.toml")) == {}
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/edged.service")
    assert doctor.service_env(Path("/etc/edged/edged.toml")) == {"STATE_DIRECTORY": "/var/lib/edged"}


# --- storage -------------------------------------------------------------------------------------


def test_read_only_state_folder_fails(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "size=4m,ro") as mnt:
        checks = by_name(doctor.run(write_config(tmp_path, state=mnt), no_camera_host(tmp_path)))
    assert checks["storage"].status == FAIL
    assert "read-only file system" in checks["storage"].summary and "remount" in checks["storage"].fix


def test_full_state_folder_without_footage_fails(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "full", "size=1m") as mnt:
        _fill(mnt / "other-data")
        checks = by_name(doctor.run(write_config(tmp_path, state=mnt), no_camera_host(tmp_path)))
    assert checks["storage"].status == FAIL
    assert "(full)" in checks["storage"].summary and "not even three segments fit" in checks["storage"].summary


def test_full_state_folder_of_own_footage_is_room_for_the_ring(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ring", "size=8m") as mnt:
        (mnt / "segments").mkdir()
        _fill(mnt / "segments" / "000001.webm")
        checks = by_name(doctor.run(write_config(tmp_path, state=mnt), no_camera_host(tmp_path)))
    s = checks["storage"]
    assert s.status == WARN, s  # evictable footage is room, but 8 MB is less than max_bytes (10 MB)
    assert "(full)" in s.summary and "in segments" in s.summary and "less than storage.max_bytes" in s.summary


def test_roomy_state_folder_not_created_yet_is_ok(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "big", "size=64m") as mnt:
        checks = by_name(doctor.run(write_config(tmp_path, state=mnt / "a" / "b"), no_camera_host(tmp_path)))
    assert checks["storage"].status == OK, checks["storage"]
    assert "(created at start)" in checks["storage"].summary
    assert not (mnt / "a").exists()  # doctor creates nothing


@pytest.mark.skipif(os.geteuid() != 0, reason="only root sees past its own write permission")
def test_state_folder_the_service_user_cannot_write(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    checks = by_name(doctor.run(write_config(tmp_path), no_camera_host(tmp_path, service_user="nobody")))
    assert checks["storage"].status == FAIL and "service user nobody cannot write" in checks["storage"].summary
    os.chown(state, 65534, 65534)  # nobody
    checks = by_name(doctor.run(write_config(tmp_path), no_camera_host(tmp_path, service_user="nobody")))
    assert checks["storage"].status == OK


def _fill(path: Path) -> None:
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


# --- credentials ---------------------------------------------------------------------------------


def v2_config(tmp_path: Path, key_line: str, base_url: str = "http://127.0.0.1:9") -> Path:
    return write_config(
        tmp_path,
        f"""
        [upload]
        targets = ["sonoran_v2", "directory"]
        [upload.sonoran_v2]
        base_url = "{base_url}"
        account_uuid = "6f1c"
        {key_line}
    """,
    )


@pytest.mark.parametrize(
    "content, mode, status, words",
    [
        (None, None, FAIL, "does not exist"),
        (SECRET + "\n", 0o644, FAIL, "open to everyone (mode 644)"),
        ("  \n", 0o600, FAIL, "is empty"),
        (SECRET + "\n", 0o600, OK, "present, not empty, mode 600"),
    ],
)
def test_key_file(tmp_path: Path, content: str | None, mode: int | None, status: str, words: str) -> None:
    key = tmp_path / "sonoran_api_key"
    if content is not None:
        key.write_text(content)
        key.chmod(mode)  # type: ignore[arg-type]
    cfg = v2_config(tmp_path, f'api_key_file = "{key}"')
    out = edged_cli("doctor", "--config", str(cfg), "--json", cwd=tmp_path)
    checks = by_name([doctor.Check(**c) for c in json.loads(out.stdout)["checks"]])
    c = checks["credentials.sonoran_v2"]
    assert c.status == status and words in c.summary, c
    assert checks["config"].status == OK  # a key problem is reported once, here, not as a bad config
    assert SECRET not in out.stdout + out.stderr
    if status == FAIL:
        assert out.returncode == 1 and c.fix


def test_key_from_systemd_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    (creds / "sonoran_api_key").write_text(SECRET)
    (creds / "sonoran_api_key").chmod(0o600)
    cfg = v2_config(tmp_path, "")
    out = edged_cli("doctor", "--config", str(cfg), "--json", cwd=tmp_path, env={"CREDENTIALS_DIRECTORY": str(creds)})
    c = by_name([doctor.Check(**c) for c in json.loads(out.stdout)["checks"]])["credentials.sonoran_v2"]
    assert c.status == OK and str(creds / "sonoran_api_key") in c.summary
    assert SECRET not in out.stdout

    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    bare = subprocess.run(
        [sys.executable, "-m", "edged", "doctor", "--config", str(cfg), "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(env, PYTHONPATH=str(REPO)),
    )
    c = by_name([doctor.Check(**c) for c in json.loads(bare.stdout)["checks"]])["credentials.sonoran_v2"]
    assert c.status == FAIL and "no $CREDENTIALS_DIRECTORY" in c.summary and "LoadCredential" in c.fix


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can read a key the service user cannot")
def test_key_file_the_service_user_cannot_read(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(SECRET)
    key.chmod(0o600)
    cfg = v2_config(tmp_path, f'api_key_file = "{key}"')
    c = by_name(doctor.run(cfg, no_camera_host(tmp_path, service_user="nobody")))["credentials.sonoran_v2"]
    assert c.status == FAIL and "cannot be read by the service user nobody" in c.summary


# --- camera, microphone, GPIO --------------------------------------------------------------------


def test_no_camera_means_the_synthetic_pattern(tmp_path: Path) -> None:
    c = by_name(doctor.run(write_config(tmp_path), no_camera_host(tmp_path)))["camera"]
    assert c.status == WARN and "synthetic test pattern will be recorded" in c.summary
    assert "No module named 'picamera2'" in c.summary and "no V4L2 capture device" in c.summary


def test_camera_required_but_absent_fails(tmp_path: Path) -> None:
    for body, words in (
        ('[camera]\nsource = "picamera2"\n', "camera.source = picamera2 but"),
        ('[camera]\nsource = "v4l2"\ndevice = "/dev/null"\n', "camera.source = v4l2 but"),
    ):
        c = by_name(doctor.run(write_config(tmp_path, body), no_camera_host(tmp_path)))["camera"]
        assert c.status == FAIL and words in c.summary, c


def test_picamera2_listing(tmp_path: Path) -> None:
    from tests.support.fakes import fake_picamera2

    fake_picamera2.reset()
    host = Host(import_picamera2=lambda: fake_picamera2, video_globs=(), asound_pcm=tmp_path / "none")
    c = by_name(doctor.run(write_config(tmp_path), host))["camera"]
    assert c.status == OK and "imx708" in c.summary and "picamera2" in c.summary
    fake_picamera2.CAMERAS[:] = [dict(fake_picamera2.USB_CAMERA)]  # libcamera lists only a USB camera
    try:
        c = by_name(doctor.run(write_config(tmp_path), host))["camera"]
    finally:
        fake_picamera2.reset()
    assert c.status == WARN and "only USB: HD Pro Webcam C920" in c.summary


def _picamera2_check(tmp_path: Path, source: str = "auto", **host_kw):
    from edged.config.schema import CameraSettings
    from edged.doctor import devices
    from tests.support.fakes import fake_picamera2

    host = Host(import_picamera2=lambda: fake_picamera2, video_globs=(), asound_pcm=tmp_path / "none", **host_kw)
    return devices.check_camera(CameraSettings(source=source), host)


@pytest.fixture
def fake_camera():
    from tests.support.fakes import fake_picamera2

    fake_picamera2.reset()
    yield fake_picamera2
    fake_picamera2.reset()


def test_doctor_opens_the_pi_camera_as_the_recorder_does(tmp_path: Path, fake_camera) -> None:
    c = _picamera2_check(tmp_path)
    assert c.status == OK, c
    assert "imx708 (picamera2): opened as the recorder opens it, YUV420 960x540 for 960x540@10" in c.summary
    cam = fake_camera.instances[-1]
    assert cam.calls[:2] == ["configure", "start"] and cam.captured == 1 and not cam.is_open  # a frame, then closed
    fake_camera.virtual_camera()  # NV12 only: still a camera the recorder can use
    c = _picamera2_check(tmp_path)
    assert c.status == OK and "edged-virtual (picamera2): opened as the recorder opens it, NV12 960x540" in c.summary


def test_doctor_fails_a_listed_camera_that_refuses_the_recorders_stream(tmp_path: Path, fake_camera) -> None:
    fake_camera.FORMATS[:] = ["XBGR8888"]  # listed by libcamera, but no 4:2:0 stream
    for source in ("auto", "picamera2"):
        c = _picamera2_check(tmp_path, source)
        assert c.status == FAIL, c
        assert "imx708 (picamera2) cannot record at 960x540@10" in c.summary
        assert "delivers XBGR8888 where YUV420 was asked for" in c.summary
    assert "synthetic test pattern would be recorded" in _picamera2_check(tmp_path).summary


def test_doctor_says_a_camera_held_by_another_process_is_in_use_not_broken(tmp_path: Path, fake_camera) -> None:
    fake_camera.IN_USE = True
    c = _picamera2_check(tmp_path)
    assert c.status == WARN and "is listed, but not checked" in c.summary and "in use by another process" in c.summary
    assert "systemctl stop edged" in c.fix


def test_doctor_fails_a_camera_that_opens_but_never_delivers(tmp_path: Path, fake_camera, monkeypatch) -> None:
    start = fake_camera.Picamera2.start
    monkeypatch.setattr(
        fake_camera.Picamera2, "start", lambda self, config=None, show_preview=False: start(self, config, None)
    )
    c = _picamera2_check(tmp_path, camera_wait=0.5)  # no event loop: no request ever completes
    assert c.status == FAIL and "did not open and deliver a frame at 960x540@10 within 0.5 s" in c.summary


PI_WITH_USB_MIC = (
    "00-00: bcm2835 Headphones : bcm2835 Headphones : playback 8\n"
    "01-00: USB Audio : USB Audio : playback 1 : capture 1\n"
)


@pytest.mark.parametrize(
    "pcm, body, status, words",
    [
        (None, "", WARN, "a synthetic tone will be recorded"),
        (None, '[audio]\nsource = "alsa"\n', FAIL, "audio.source = alsa but no ALSA capture device"),
        (PI_WITH_USB_MIC, "", WARN, 'audio.device = "default" cannot record'),
        (PI_WITH_USB_MIC, '[audio]\ndevice = "plughw:1,0"\n', OK, "hw:1,0 USB Audio"),
        (PI_WITH_USB_MIC, '[audio]\nsource = "none"\n', OK, "video only"),
    ],
)
def test_microphone(tmp_path: Path, pcm: str | None, body: str, status: str, words: str) -> None:
    host = no_camera_host(tmp_path, snd_dir=tmp_path / "snd")
    if pcm is not None:
        host.asound_pcm.write_text(pcm)
    c = by_name(doctor.run(write_config(tmp_path, body), host))["microphone"]
    assert c.status == status and words in c.summary, c
    if "cannot record" in words:
        assert c.fix == 'set audio.device = "plughw:1,0"'


def test_microphone_on_this_machine_matches_proc_asound(tmp_path: Path) -> None:
    c = by_name(doctor.run(write_config(tmp_path), Host()))["microphone"]
    has_capture = any(" capture " in line + " " for line in _read("/proc/asound/pcm").splitlines())
    assert (c.status == WARN and "synthetic tone" in c.summary) is not has_capture, c


def test_gpio(tmp_path: Path) -> None:
    body = '[gpio]\nbutton_pin = "GPIO17"\n'
    missing = no_camera_host(tmp_path, gpiochip_glob=str(tmp_path / "gpiochip*"))
    c = by_name(doctor.run(write_config(tmp_path, body), missing))["gpio"]
    assert c.status == FAIL and "gpio.button_pin = GPIO17 but no GPIO chip" in c.summary
    (tmp_path / "gpiochip0").write_bytes(b"")
    c = by_name(doctor.run(write_config(tmp_path, body), missing))["gpio"]
    assert c.status in (OK, WARN) and "gpiochip0" in c.summary
    c = by_name(doctor.run(write_config(tmp_path), missing))["gpio"]
    assert c.status == OK and "no GPIO pins configured" in c.summary


# --- clock, network, systemd ---------------------------------------------------------------------


def test_clock_falls_back_to_the_kernel(tmp_path: Path) -> None:
    c = by_name(doctor.run(write_config(tmp_path), no_camera_host(tmp_path, timedatectl="/nonexistent")))["clock"]
    assert "adjtimex" in c.summary
    assert (c.status == OK) is SystemClock().synchronized()


def test_clock_from_timedatectl(tmp_path: Path) -> None:
    for props, status, words in (
        ("NTP=yes\nNTPSynchronized=yes", OK, "synchronised"),
        ("NTP=yes\nNTPSynchronized=no", WARN, "no time server answered"),
        ("NTP=no\nNTPSynchronized=no", WARN, "NTP is off"),
    ):
        tool = _script(tmp_path / "timedatectl", f'[ "$1" = show ] && printf "{props}\\n"')
        c = by_name(doctor.run(write_config(tmp_path), no_camera_host(tmp_path, timedatectl=str(tool))))["clock"]
        assert c.status == status and words in c.summary, c
    assert "set-ntp true" in c.fix


def test_systemd_not_pid1(tmp_path: Path) -> None:
    c = by_name(doctor.run(write_config(tmp_path), no_camera_host(tmp_path, systemd_dir=tmp_path / "nope")))["systemd"]
    assert c.status == WARN and "systemd is not running here" in c.summary


@pytest.mark.parametrize(
    "props, status, words",
    [
        ("LoadState=not-found\nActiveState=inactive", WARN, "not installed"),
        ("LoadState=loaded\nUnitFileState=enabled\nActiveState=active\nSubState=running\nNRestarts=0", OK, "running"),
        ("LoadState=loaded\nUnitFileState=enabled\nActiveState=failed\nResult=exit-code", FAIL, "failed"),
        (
            "LoadState=loaded\nUnitFileState=enabled\nActiveState=activating\nSubState=auto-restart\nNRestarts=7",
            FAIL,
            "7 restarts",
        ),
        ("LoadState=loaded\nUnitFileState=disabled\nActiveState=inactive", WARN, "not enabled"),
    ],
)
def test_systemd_unit_states(tmp_path: Path, props: str, status: str, words: str) -> None:
    """systemd cannot run as PID 1 here: systemctl's `show` output is played back (with a drop-in's
    ReadWritePaths= for the test's state folder)."""
    tool = _script(tmp_path / "systemctl", f'[ "$1" = show ] && printf "{props}\\nReadWritePaths={tmp_path}\\n"')
    host = no_camera_host(tmp_path, systemd_dir=tmp_path, systemctl=str(tool))
    c = by_name(doctor.run(write_config(tmp_path), host))["systemd"]
    assert c.status == status and words in c.summary, c


def test_systemd_sandbox_must_let_the_daemon_write_its_folders(tmp_path: Path) -> None:
    """ProtectSystem=strict: a state folder outside /var/lib/edged needs a ReadWritePaths= drop-in."""
    running = "LoadState=loaded\\nUnitFileState=enabled\\nActiveState=active\\nSubState=running"
    host = no_camera_host(tmp_path, systemd_dir=tmp_path, systemctl=str(tmp_path / "systemctl"))
    for rw, status in (("", FAIL), (f"-{tmp_path}/state /srv/x", OK), (f"{tmp_path}/stat", FAIL)):
        _script(tmp_path / "systemctl", f'[ "$1" = show ] && printf "{running}\\nReadWritePaths={rw}\\n"')
        c = by_name(doctor.run(write_config(tmp_path), host))["systemd"]
        assert c.status == status, (rw, c)
        if status == FAIL:
            assert f"may not write {tmp_path / 'state'}" in c.summary and "ReadWritePaths=" in c.fix


NETNS_DOCTOR = """
import json, socket, sys
from pathlib import Path
from edged import doctor
listener = socket.create_server(("127.0.0.1", 0))
port = listener.getsockname()[1]
closed = socket.create_server(("127.0.0.1", 0)); closed_port = closed.getsockname()[1]; closed.close()
out = {}
for name, p in (("open", port), ("closed", closed_port)):
    cfg = Path(sys.argv[1]) / f"{name}.toml"
    cfg.write_text(f'[storage]\\ndir = "{sys.argv[1]}/state"\\nmin_free_bytes = 0\\nmax_bytes = 10000000\\n'
                   f'[upload]\\ntargets = ["sonoran_legacy"]\\n[upload.sonoran_legacy]\\n'
                   f'base_url = "http://127.0.0.1:{p}"\\ncommunity = "c"\\naccount = "a"\\n'
                   f'session_id = "s"\\nusername = "u"\\n')
    out[name] = [c.__dict__ for c in doctor.run(cfg, doctor.Host(probe_timeout=1.0)) if c.name == "network"][0]
    out[name]["port"] = p
print(json.dumps(out))
"""


def _in_netns(tmp_path: Path, setup: str) -> dict:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("unshare or ip not installed")
    (tmp_path / "netns_doctor.py").write_text(NETNS_DOCTOR)
    script = (
        f"mount -t sysfs sysfs /sys && ip link set lo up && {setup} "
        f"exec {sys.executable} {tmp_path / 'netns_doctor.py'} {tmp_path}"
    )
    out = subprocess.run(
        ["unshare", "--net", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=60,
    )
    if out.returncode != 0 and "unshare" in out.stderr:
        pytest.skip(f"cannot make a network namespace: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_network_with_no_interface_up(tmp_path: Path) -> None:
    result = _in_netns(tmp_path, "")
    for c in result.values():
        assert c["status"] == WARN and "no network interface is up" in c["summary"]


def test_network_probes_the_targets(tmp_path: Path) -> None:
    result = _in_netns(
        tmp_path, "ip link add dv0 type veth peer name dv1 && ip link set dv0 up && ip link set dv1 up &&"
    )
    opened, closed = result["open"], result["closed"]
    assert opened["status"] == OK and "dv0" in opened["summary"]
    assert f"reached 127.0.0.1:{opened['port']}" in opened["summary"]
    assert closed["status"] == WARN and f"no TCP connection to 127.0.0.1:{closed['port']}" in closed["summary"]


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


UNPRIVILEGED_DOCTOR = """
import json, sys
from pathlib import Path
from edged import doctor
checks = doctor.run(Path(sys.argv[1]), doctor.Host(service_user="daemon"))
print(json.dumps({c.name: c.__dict__ for c in checks}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_run_as_an_unprivileged_user(tmp_path: Path) -> None:
    """A person checking the service's folders without sudo is told to use it, not that they are broken."""
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="edged-doctor-"))  # tmp_path's parents are root-only
    try:
        shared.chmod(0o755)
        creds = shared / "creds"
        creds.mkdir(mode=0o700)
        (creds / "sonoran_api_key").write_text(SECRET)
        (creds / "sonoran_api_key").chmod(0o600)
        state = shared / "state"
        state.mkdir(mode=0o750)
        os.chown(state, 1, 1)  # the 'daemon' user stands for the service user
        cfg = shared / "edged.toml"
        cfg.write_text(
            f'[storage]\ndir = "{state}"\nmin_free_bytes = 0\nmax_bytes = 10000000\n[upload]\n'
            f'targets = ["sonoran_v2"]\n[upload.sonoran_v2]\naccount_uuid = "6f1c"\n'
        )
        cfg.chmod(0o644)
        (shared / "run.py").write_text(UNPRIVILEGED_DOCTOR)
        (shared / "run.py").chmod(0o644)  # whatever the umask (a daemon run in-process sets 077)
        # The checkout may sit in a folder only root can enter (a mktemp clone, /root): the
        # unprivileged process runs a copy of the package and its dependencies.
        nobody = {"user": 65534, "group": 65534, "extra_groups": []}
        found = reachable.python_for(shared, "import edged.doctor, av", nobody)
        assert not isinstance(found, str), found
        python, extra = found
        out = subprocess.run(
            [*python, str(shared / "run.py"), str(cfg)],
            capture_output=True,
            text=True,
            cwd=shared,
            env=dict(os.environ, **extra, CREDENTIALS_DIRECTORY=str(creds)),
            **nobody,
        )
        assert out.returncode == 0, out.stderr
        checks = json.loads(out.stdout)
        assert checks["config"]["status"] == OK
        assert (
            checks["storage"]["status"] == WARN and "belongs to the service user daemon" in checks["storage"]["summary"]
        )
        key = checks["credentials.sonoran_v2"]
        assert key["status"] == WARN and "cannot be looked at by uid 65534" in key["summary"] and "sudo" in key["fix"]
        assert SECRET not in out.stdout
    finally:
        shutil.rmtree(shared)
