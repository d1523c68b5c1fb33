"""Configuration: defaults, the sample file, and every kind of bad input named by its key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edged.config import schema as config
from edged.core import limits
from tests.conftest import REPO

SAMPLE = REPO / "configs" / "edged.toml"


def problems(text: str, tmp_path: Path) -> dict[str, str]:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(config.ConfigError) as exc:
        config.load(p)
    found = dict(exc.value.problems)
    assert len(found) == len(exc.value.problems), "one problem per key"
    return found


# --- defaults and the sample ------------------------------------------------------------------


def test_defaults_follow_the_sonoran_target():
    s = config.Settings()
    assert (
        (s.camera.width, s.camera.height, s.camera.fps)
        == (limits.TARGET_WIDTH, limits.TARGET_HEIGHT, limits.TARGET_FPS)
        == (960, 540, 10)
    )
    assert s.camera.bitrate == limits.TARGET_VIDEO_BITRATE == 300_000
    assert s.audio.bitrate == limits.TARGET_AUDIO_BITRATE == 64_000
    assert s.storage.segment_seconds == 10.0
    assert s.clips.max_bytes == limits.MAX_UPLOAD_BYTES and s.clips.max_duration_ms == limits.MAX_DURATION_MS
    assert (s.clips.pre_roll_seconds, s.clips.post_roll_seconds) == (30.0, 30.0)
    # The defaults pass their own validation (a default outside its rule would be a trap).
    assert config.from_mapping({}) == s


def test_defaults_pass_every_rule_of_their_own_key():
    defaults = config.Settings()
    for section in ("device", "camera", "audio", "storage", "clips", "gpio"):
        obj = getattr(defaults, section)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            got = config.from_mapping({section: {f.name: value}})
            assert getattr(getattr(got, section), f.name) == value, f"{section}.{f.name}"


def _sample_keys() -> list[tuple[str, str]]:
    raw = tomllib.loads(SAMPLE.read_text())
    return [(section, key) for section, table in raw.items() for key in table]


def test_sample_config_is_valid_and_equals_the_embedded_defaults(monkeypatch):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    s = config.load(SAMPLE)
    defaults = config.Settings()
    keys = _sample_keys()
    assert len(keys) >= 25, "the sample sets the keys it documents"
    for section, key in keys:
        assert getattr(getattr(s, section), key) == getattr(getattr(defaults, section), key), f"{section}.{key}"
    # device.id is left commented on purpose: its default is the host name.
    assert ("device", "id") not in keys
    # Every key of the schema is documented in the sample (commented keys count).
    text = SAMPLE.read_text()
    for dotted, _, _ in config.describe():
        assert dotted.split(".")[1] in text, f"{dotted} missing from configs/edged.toml"
    # ... and every choice of the target list is named where the list is set.
    (targets_line,) = [line for line in text.splitlines() if line.startswith("targets =")]
    for name in config.UPLOAD_TARGETS:
        assert name in targets_line, f"upload target {name} not named beside upload.targets in the sample"


def test_sample_config_keeps_the_systemd_state_directory(monkeypatch, tmp_path):
    """Under systemd (StateDirectory=edged sets $STATE_DIRECTORY) the embedded default of
    storage.dir is that folder. The sample claims to equal the embedded defaults, so installed as
    /etc/edged/edged.toml it must not move the footage to a relative "edged-state" (which, with
    systemd's working directory "/", is /edged-state: not writable by the edged user)."""
    state = tmp_path / "var-lib-edged"
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    assert config.Settings().storage.dir == str(state)
    assert config.load(SAMPLE).storage.dir == str(state), (
        "configs/edged.toml sets storage.dir and so overrides $STATE_DIRECTORY"
    )


def test_state_directory_takes_the_first_of_several(monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edged:/var/lib/other")
    assert config.Settings().storage.dir == "/var/lib/edged"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert config.Settings().storage.dir == "edged-state"


def test_default_path_is_optional_but_used_when_present(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert config.load_or_defaults(None).origin == "<embedded defaults>"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "edged.toml").write_text("[camera]\nfps = 5\n")
    s = config.load_or_defaults(None)
    assert s.camera.fps == 5 and s.origin == str(Path("configs/edged.toml"))
    # An explicit path must exist, even when the default one does.
    with pytest.raises(config.ConfigError) as exc:
        config.load_or_defaults(tmp_path / "other.toml")
    assert exc.value.problems == [("<file>", "not found")]


# --- files that cannot be used ------------------------------------------------------------------


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(config.ConfigError) as exc:
        config.load(tmp_path / "nope.toml")
    assert exc.value.problems == [("<file>", "not found")] and "nope.toml" in str(exc.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(config.ConfigError) as exc:
        config.load(tmp_path)  # a directory
    assert exc.value.problems[0][0] == "<file>" and "cannot be read" in exc.value.problems[0][1]
    assert str(tmp_path) in str(exc.value)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[device]\nid = "caf\xe9"\n')
    with pytest.raises(config.ConfigError) as exc:
        config.load(bad)
    assert exc.value.problems == [("<file>", "is not UTF-8 text")] and "latin1.toml" in str(exc.value)


def test_syntax_error_says_where(tmp_path):
    p = problems("[camera\nfps = 10\n", tmp_path)
    assert "<syntax>" in p and "line 1" in p["<syntax>"]
    p = problems("[camera]\nfps = 10\nwidth = \n", tmp_path)
    assert "line 3" in p["<syntax>"]
    p = problems("[camera]\nfps = 10\nfps = 12\n", tmp_path)  # a key twice is a TOML error
    assert "<syntax>" in p


def test_unknown_section_and_key(tmp_path):
    p = problems("[camra]\nfps = 10\n[storage]\nsizee = 1\n", tmp_path)
    assert "unknown section" in p["camra"] and "camera" in p["camra"]
    assert "unknown key" in p["storage.sizee"] and "max_bytes" in p["storage.sizee"]
    p = problems("[camera.extra]\nfps = 10\n", tmp_path)  # a sub-table is an unknown key
    assert "unknown key" in p["camera.extra"]
    p = problems('origin = "x"\n', tmp_path)  # Settings.origin is not a TOML key
    assert "unknown section" in p["origin"]


# --- bad values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line,key,words",
    [
        # wrong types
        ('[camera]\nfps = "ten"', "camera.fps", "must be an integer"),
        ("[camera]\nfps = true", "camera.fps", "must be an integer"),
        ("[camera]\nfps = 10.0", "camera.fps", "must be an integer"),
        ("[camera]\npaced = 1", "camera.paced", "true or false"),
        ('[camera]\npaced = "yes"', "camera.paced", "true or false"),
        ('[camera]\nkeyframe_seconds = "2"', "camera.keyframe_seconds", "must be a number"),
        ("[camera]\nkeyframe_seconds = true", "camera.keyframe_seconds", "must be a number"),
        ("[device]\nid = 7", "device.id", "must be a string"),
        ('[storage]\ndir = ["a"]', "storage.dir", "must be a string"),
        # out of range
        ("[camera]\nfps = 0", "camera.fps", "at least 1"),
        ("[camera]\nfps = 61", "camera.fps", "at most 60"),
        ("[camera]\nwidth = 961", "camera.width", "even"),
        ("[camera]\nheight = 541", "camera.height", "even"),
        ("[camera]\nwidth = 62", "camera.width", "at least 64"),
        ("[camera]\nbitrate = 1000", "camera.bitrate", "at least 50000"),
        ("[audio]\nbitrate = 5999", "audio.bitrate", "at least 6000"),
        ("[audio]\nchannels = 3", "audio.channels", "at most 2"),
        ("[storage]\nsegment_seconds = 600", "storage.segment_seconds", "at most 60"),
        ("[storage]\nsegment_seconds = 1.5", "storage.segment_seconds", "at least 2"),
        ("[storage]\nmax_bytes = 9999999", "storage.max_bytes", "at least 10000000"),
        ("[storage]\nmin_free_bytes = -1", "storage.min_free_bytes", "at least 0"),
        ("[storage]\nsync_interval_seconds = 0.1", "storage.sync_interval_seconds", "at least 0.2"),
        ("[clips]\npre_roll_seconds = 121", "clips.pre_roll_seconds", "at most 120"),
        ("[clips]\nmax_bytes = 7000000", "clips.max_bytes", "at most 6000000"),
        ("[clips]\nmax_duration_ms = 130000", "clips.max_duration_ms", "at most 120000"),
        ("[gpio]\nbutton_bounce_ms = -5", "gpio.button_bounce_ms", "at least 0"),
        # choices
        ('[camera]\nsource = "webcam"', "camera.source", "one of auto, picamera2, v4l2, synthetic, file; got 'webcam'"),
        ('[audio]\nsource = "pulse"', "audio.source", "one of auto, alsa, synthetic, none"),
        # the file rule, tables, cross-checks
        ('[camera]\nsource = "file"', "camera.device", "must name the video file"),
        ("camera = 3", "camera", "must be a table"),
        ("[clips]\nmax_duration_ms = 8000", "camera.keyframe_seconds", "do not fit clip parts"),
    ],
)
def test_bad_values_name_the_key_and_reason(tmp_path, line, key, words):
    p = problems(line + "\n", tmp_path)
    assert set(p) == {key}, p
    assert words in p[key], p[key]


def test_good_edge_values_are_accepted(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(
        '[camera]\nsource = "file"\ndevice = "/tmp/x.mp4"\nfps = 60\nwidth = 64\nkeyframe_seconds = 2\n'
        "[storage]\nsegment_seconds = 60\nmin_free_bytes = 0\n[clips]\nmax_duration_ms = 120000\n"
    )
    s = config.load(p)
    assert (s.camera.fps, s.camera.width, s.storage.segment_seconds) == (60, 64, 60.0)
    assert isinstance(s.camera.keyframe_seconds, float) and s.camera.keyframe_seconds == 2.0


def test_every_problem_is_reported_at_once(tmp_path):
    p = problems('[camera]\nfps = 0\nwidth = 3\n[audio]\nbitrate = "x"\n[storage]\nnope = 1\n[camra]\n', tmp_path)
    assert set(p) == {"camera.fps", "camera.width", "audio.bitrate", "storage.nope", "camra"}


def test_cross_checks_are_reported_with_the_value_errors(tmp_path):
    """README: errors are reported "all at once". A file source without a device is as much a
    problem of the file as a bad frame rate next to it; it must not need a second round."""
    p = problems('[camera]\nsource = "file"\nfps = 0\n', tmp_path)
    assert set(p) == {"camera.fps", "camera.device"}, p


def test_budget_too_small_for_three_segments(tmp_path):
    p = problems("[storage]\nmax_bytes = 10000000\nsegment_seconds = 60\n[camera]\nbitrate = 8000000\n", tmp_path)
    assert set(p) == {"storage.max_bytes"} and "three segments" in p["storage.max_bytes"]


def test_error_text_names_file_key_and_reason(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[camera]\nfps = 0\n[storage]\nsizee = 1\n")
    with pytest.raises(config.ConfigError) as exc:
        config.load(bad)
    lines = str(exc.value).splitlines()
    assert f"{bad}: camera.fps: must be at least 1; got 0" in lines
    assert any(line.startswith(f"{bad}: storage.sizee: unknown key") for line in lines)


# --- the command line ------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_config_check_exit_codes(tmp_path):
    good = run_cli("config", "check", str(SAMPLE))
    assert good.returncode == 0 and "ok" in good.stdout and good.stderr == ""
    bad = tmp_path / "bad.toml"
    bad.write_text('[camera]\nfps = 0\nsource = "webcam"\n')
    out = run_cli("config", "check", str(bad))
    assert out.returncode != 0 and out.stdout == ""
    assert f"{bad}: camera.fps: must be at least 1" in out.stderr
    assert f"{bad}: camera.source: must be one of" in out.stderr
    missing = run_cli("config", "check", str(tmp_path / "absent.toml"))
    assert missing.returncode != 0 and "absent.toml" in missing.stderr and "not found" in missing.stderr


@pytest.mark.parametrize(
    "text,key",
    [
        ('[storage]\ndir = "{state}"\nmax_bytes = -1\n', "storage.max_bytes"),
        ('[storage]\ndir = "{state}"\n[camera]\nsource = "webcam"\n', "camera.source"),
        ('[storage]\ndir = "{state}"\n[camera\n', "<syntax>"),
    ],
)
def test_run_refuses_a_bad_config_before_touching_storage(tmp_path, text, key):
    bad = tmp_path / "bad.toml"
    state = tmp_path / "state"
    bad.write_text(text.format(state=state))
    out = run_cli("run", "--config", str(bad), "--for", "2", cwd=tmp_path)
    assert out.returncode == 78 and key in out.stderr
    assert not state.exists(), "a bad configuration must not start recording"
    assert list(tmp_path.iterdir()) == [bad], "nothing created (not even the default edged-state)"


def test_run_with_a_missing_config_does_not_fall_back_to_defaults(tmp_path):
    out = run_cli("run", "--config", str(tmp_path / "absent.toml"), "--for", "2", cwd=tmp_path)
    assert out.returncode == 78 and "absent.toml" in out.stderr and "not found" in out.stderr
    assert list(tmp_path.iterdir()) == [], "no state folder from the embedded defaults"


# --- hostile files: bounded, never hanging, never crashing -------------------------------------


@pytest.mark.parametrize(
    "text,key,words",
    [
        ("a = " + "[" * 3000 + "]" * 3000, "<file>", "deeper than"),
        ("a = " + "{b = " * 3000 + "1" + "}" * 3000, "<file>", "deeper than"),
        ("a." * 3000 + "b = 1", "a.a.a", "nested deeper than"),  # dotted keys nest without brackets
        ("[" + "a." * 3000 + "b]\nc = 1", "a.a.a", "nested deeper than"),
        ("[camera]\nfps = 1" + "0" * 5000, "<syntax>", "4300"),  # past int()'s digit limit
        ("[clips]\npre_roll_seconds = nan", "clips.pre_roll_seconds", "finite"),
        ("[clips]\npost_roll_seconds = inf", "clips.post_roll_seconds", "finite"),
        ('[device]\nunit_location = "' + "x" * 300 + '"', "device.unit_location", "at most 256 characters"),
        ('[device]\nid = "a\\u0000b"', "device.id", "control characters"),
        ("[upload]\ntargets = [" + ", ".join(['"directory"'] * 17) + "]", "upload.targets", "at most 16"),
        ("[clips]\npre_roll_seconds = 0.0\npost_roll_seconds = 0.5", "clips.post_roll_seconds", "at least 1 s"),
        ("[storage]\nmin_free_bytes = 1000000000000000000", "storage.min_free_bytes", "at most"),
        ("[upload]\nbandwidth_kbps = 100000000", "upload.bandwidth_kbps", "at most"),
        ("[upload.sonoran_v2]\nroblox = 10000000000000", "upload.sonoran_v2.roblox", "at most"),
    ],
)
def test_hostile_values_are_named_not_crashed_on(tmp_path, text, key, words):
    p = problems(text + "\n", tmp_path)
    assert any(k.startswith(key) for k in p), p
    reason = next(r for k, r in p.items() if k.startswith(key))
    assert words in reason, reason
    assert len(str(p)) < 2000, "messages stay short whatever the input"


def test_deep_nesting_is_refused_before_the_parser_recurses(monkeypatch):
    calls = []
    monkeypatch.setattr(config.tomllib, "loads", lambda text: calls.append(text) or {})
    with pytest.raises(config.ConfigError):
        config.parse_toml(("a = " + "[" * 40 + "]" * 40).encode())
    assert calls == []
    # Brackets inside strings and comments are not nesting.
    text = 'a = "[[[[[[[[[[[[[[[[[[[[" # [[[[[[[[[[[[[[[[[[[[\nb = \'{{{{{{{{{{{{{{{{{{{{\'\nc = """\\"[[[[[[[[[[[[[[[[[["""\n'  # noqa: E501
    assert not config.bracket_depth_exceeds(text)


def test_every_numeric_key_has_both_bounds_and_every_key_a_trust_class():
    for key, value, _ in config.describe():
        f = config._field_of(key)
        assert config.trust_of(key) in config.TRUST_CLASSES, key
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert f.metadata["lo"] is not None and f.metadata["hi"] is not None, f"{key} needs lo and hi"


def test_trust_classes_of_what_matters():
    signed = [
        "upload.targets",
        "upload.directory.path",
        "device.id",
        "device.unit_number",
        "camera.source",
        "camera.device",
        "audio.source",
        "audio.device",
        "upload.bota.device_id",
        "upload.bota.base_url",
        "upload.bota.token_file",
    ]
    signed += [
        f"upload.sonoran_v2.{k}"
        for k in (
            "base_url",
            "api_key_file",
            "account_uuid",
            "community_user_id",
            "roblox",
            "discord",
            "ident_id",
            "plan",
            "devices_sharing_key",
        )
    ]
    signed += [
        f"upload.sonoran_legacy.{k}"
        for k in ("base_url", "community", "account", "session_id", "username", "ident_id", "plan")
    ]
    for key in signed:
        assert config.trust_of(key) == config.SIGNED, key
    for key in ("storage.dir", "sync.dir", "sync.fleet_public_key", "sync.poll_seconds", "sync.status_group"):
        assert config.trust_of(key) == config.LOCAL, key
    assert set(config.keys_of(config.LOCAL)) == {
        "storage.dir",
        "sync.dir",
        "sync.fleet_public_key",
        "sync.poll_seconds",
        "sync.status_group",
    }
    assert "clips.pre_roll_seconds" in config.keys_of(config.TUNABLE)


def _fifo(path: Path) -> Path:
    import os

    os.mkfifo(path)
    return path


def test_the_local_loader_never_hangs_nor_reads_forever(tmp_path):
    import os
    import time

    fifo = _fifo(tmp_path / "fifo.toml")
    (tmp_path / "zero.toml").symlink_to("/dev/zero")
    (tmp_path / "fifo-link.toml").symlink_to(fifo)
    (tmp_path / "huge.toml").write_bytes(b"# " + b"x" * (config.MAX_FILE_BYTES + 10) + b"\n")
    for name, words in (
        ("fifo.toml", "FIFO"),
        ("zero.toml", "device"),
        ("fifo-link.toml", "FIFO"),
        ("huge.toml", "bytes"),
    ):
        t0 = time.monotonic()
        with pytest.raises(config.ConfigError) as exc:
            config.load(tmp_path / name)
        assert time.monotonic() - t0 < 5, name
        assert exc.value.problems[0][0] == "<file>" and words in exc.value.problems[0][1], (name, exc.value.problems)
    # A local config that is a link to a regular file is still followed (the local config is trusted).
    (tmp_path / "real.toml").write_text("[camera]\nfps = 5\n")
    (tmp_path / "link.toml").symlink_to(tmp_path / "real.toml")
    assert config.load(tmp_path / "link.toml").camera.fps == 5
    assert os.path.exists(fifo)


def test_folders_that_must_stay_apart(tmp_path):
    state, sync = tmp_path / "state", tmp_path / "sync"

    def check(**sections: dict) -> dict[str, str]:
        data = {"storage": {"dir": str(state), "min_free_bytes": 0}, "sync": {"dir": str(sync)}}
        for k, v in sections.items():
            data.setdefault(k, {}).update(v)
        try:
            config.from_mapping(data)
        except config.ConfigError as exc:
            return dict(exc.problems)
        return {}

    assert check() == {}
    assert "sync.dir" in check(sync={"dir": str(state / "sync")})
    assert "sync.dir" in check(storage={"dir": str(sync / "state")})
    assert "upload.directory.path" in check(upload={"directory": {"path": str(sync / "out")}})
    assert "upload.directory.path" in check(upload={"directory": {"path": str(state)}})
    assert "upload.directory.path" in check(upload={"directory": {"path": str(tmp_path)}})
    assert "camera.device" in check(camera={"source": "file", "device": str(sync / "video.webm")})
    assert "upload.sonoran_v2.api_key_file" in check(upload={"sonoran_v2": {"api_key_file": str(sync / "k")}})
    sync.mkdir()
    (sync / "fleet.pub").write_text("x")
    assert "sync.fleet_public_key" in check(sync={"fleet_public_key": str(sync / "fleet.pub")})
    # Through a link: the sync folder a link to the state folder is still the state folder.
    state.mkdir()
    (tmp_path / "alias").symlink_to(state)
    assert "sync.dir" in check(sync={"dir": str(tmp_path / "alias")})


# --- the trust model for synced files ----------------------------------------------------------------

LOCAL = {"storage": {"dir": "/tmp/edged-trust-state", "min_free_bytes": 0}}
GiB = 1 << 30


def synced(data: dict, *, signed: bool = False, local: dict | None = None, fs: int = 64 * GiB) -> dict[str, str]:
    try:
        config.from_layers(local or LOCAL, data, signed=signed, size_of=lambda _: fs)
    except config.ConfigError as exc:
        return dict(exc.problems)
    return {}


@pytest.mark.parametrize(
    "data,key",
    [
        ({"storage": {"max_bytes": 40_000_000}}, "storage.max_bytes"),  # below the local budget
        ({"storage": {"sync_interval_seconds": 5.0}}, "storage.sync_interval_seconds"),
        ({"clips": {"pre_roll_seconds": 0.0}}, "clips.pre_roll_seconds"),
        ({"clips": {"post_roll_seconds": 2.0}}, "clips.post_roll_seconds"),
        ({"upload": {"bandwidth_kbps": 1}}, "upload.bandwidth_kbps"),
        ({"upload": {"retry_cap_seconds": 86400.0}}, "upload.retry_cap_seconds"),
        ({"upload": {"timeout_seconds": 5.0}}, "upload.timeout_seconds"),
        ({"camera": {"bitrate": 50_000}}, "camera.bitrate"),
        ({"audio": {"bitrate": 6_000}}, "audio.bitrate"),
    ],
)
def test_unsigned_cannot_keep_less_evidence(data, key):
    p = synced(data)
    assert set(p) == {key} and "unsigned synced config" in p[key], p
    assert synced(data, signed=True) == {}, "a signed config may"


@pytest.mark.parametrize(
    "data,key",
    [
        ({"upload": {"sonoran_v2": {"account_uuid": "someone-else"}}}, "upload.sonoran_v2.account_uuid"),
        (
            {"upload": {"sonoran_legacy": {"community": "c", "account": "a", "session_id": "s", "username": "u"}}},
            "upload.sonoran_legacy.community",
        ),
        ({"upload": {"bota": {"device_id": "other"}}}, "upload.bota.device_id"),
        ({"device": {"id": "other"}}, "device.id"),
        ({"camera": {"source": "file", "device": "/tmp/x.webm"}}, "camera.source"),
        ({"audio": {"source": "none"}}, "audio.source"),
        ({"camera": {"width": 64}}, "camera.width"),
        ({"gpio": {"button_pin": ""}}, "gpio.button_pin"),
    ],
)
def test_unsigned_cannot_set_signed_only_keys(data, key):
    p = synced(data)
    assert key in p and "signed-only" in p[key], p


def test_unsigned_bounds_that_allow_what_keeps_more():
    assert synced({"upload": {"bandwidth_kbps": 0}}) == {}
    assert synced({"upload": {"bandwidth_kbps": 600}}) == {}
    assert synced({"storage": {"max_bytes": 8_000_000_000}}) == {}  # raised above the local 4 GB
    assert synced({"clips": {"pre_roll_seconds": 10.0, "post_roll_seconds": 60.0}}) == {}
    # The floor is against the local value, not the default.
    assert "storage.max_bytes" in synced(
        {"storage": {"max_bytes": 2 * GiB}}, local={"storage": {"max_bytes": 3 * GiB, "min_free_bytes": 0}}
    )


def test_min_free_bytes_is_a_fraction_of_the_file_system_for_every_synced_config(tmp_path):
    for signed in (False, True):
        p = synced({"storage": {"min_free_bytes": 10**18}}, signed=signed)
        assert set(p) == {"storage.min_free_bytes"}, p
        p = synced({"storage": {"min_free_bytes": 7 * GiB}}, signed=signed, fs=64 * GiB)
        assert set(p) == {"storage.min_free_bytes"} and "10%" in p["storage.min_free_bytes"], p
        assert synced({"storage": {"min_free_bytes": 6 * GiB}}, signed=signed, fs=64 * GiB) == {}
    # The real file system of the state folder (its nearest existing parent) by default.
    size = config.fs_size(str(tmp_path / "not" / "made"))
    assert size > 0
    local = {"storage": {"dir": str(tmp_path / "state"), "min_free_bytes": 0}}
    with pytest.raises(config.ConfigError) as exc:
        config.from_layers(local, {"storage": {"min_free_bytes": size // 5}})
    assert [k for k, _ in exc.value.problems] == ["storage.min_free_bytes"]


def test_a_quoted_dotted_key_is_neither_a_crash_nor_a_way_round():
    p = synced({"sync.dir": "/tmp/x"})
    assert '"sync.dir"' in p and "unknown section" in p['"sync.dir"']
    p = synced({"storage": {"dir.x": 1}})
    assert set(p) == {'storage."dir.x"'}
    assert set(synced({"": {"": 1}})) == {'""'}, "an empty name is still a named key"


def test_the_readme_table_is_the_schemas():
    readme = (REPO / "README.md").read_text()
    begin, end = "<!-- config-table: python -m edged.config.schema -->\n", "<!-- end of config-table -->"
    assert begin in readme and end in readme
    table = readme.split(begin, 1)[1].split(end, 1)[0]
    assert table == config.markdown_table(), "README's config table is stale: paste python -m edged.config.schema"
