"""Configuration: defaults, the sample file, and every kind of bad input named by its key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edged import config, limits
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
    assert (s.camera.width, s.camera.height, s.camera.fps) == \
        (limits.TARGET_WIDTH, limits.TARGET_HEIGHT, limits.TARGET_FPS) == (960, 540, 10)
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


def test_sample_config_keeps_the_systemd_state_directory(monkeypatch, tmp_path):
    """Under systemd (StateDirectory=edged sets $STATE_DIRECTORY) the embedded default of
    storage.dir is that folder. The sample claims to equal the embedded defaults, so installed as
    /etc/edged/edged.toml it must not move the footage to a relative "edged-state" (which, with
    systemd's working directory "/", is /edged-state: not writable by the edged user)."""
    state = tmp_path / "var-lib-edged"
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    assert config.Settings().storage.dir == str(state)
    assert config.load(SAMPLE).storage.dir == str(state), \
        "configs/edged.toml sets storage.dir and so overrides $STATE_DIRECTORY"


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
    p = problems("origin = \"x\"\n", tmp_path)  # Settings.origin is not a TOML key
    assert "unknown section" in p["origin"]


# --- bad values ------------------------------------------------------------------------------

@pytest.mark.parametrize("line,key,words", [
    # wrong types
    ('[camera]\nfps = "ten"', "camera.fps", "must be an integer"),
    ("[camera]\nfps = true", "camera.fps", "must be an integer"),
    ("[camera]\nfps = 10.0", "camera.fps", "must be an integer"),
    ("[camera]\npaced = 1", "camera.paced", "true or false"),
    ('[camera]\npaced = "yes"', "camera.paced", "true or false"),
    ("[camera]\nkeyframe_seconds = \"2\"", "camera.keyframe_seconds", "must be a number"),
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
    ("[camera]\nsource = \"webcam\"", "camera.source", "one of auto, picamera2, v4l2, synthetic, file; got 'webcam'"),
    ("[audio]\nsource = \"pulse\"", "audio.source", "one of auto, alsa, synthetic, none"),
    # the file rule, tables, cross-checks
    ("[camera]\nsource = \"file\"", "camera.device", "must name the video file"),
    ("camera = 3", "camera", "must be a table"),
    ("[clips]\nmax_duration_ms = 8000", "camera.keyframe_seconds", "do not fit clip parts"),
])
def test_bad_values_name_the_key_and_reason(tmp_path, line, key, words):
    p = problems(line + "\n", tmp_path)
    assert set(p) == {key}, p
    assert words in p[key], p[key]


def test_good_edge_values_are_accepted(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[camera]\nsource = "file"\ndevice = "/tmp/x.mp4"\nfps = 60\nwidth = 64\nkeyframe_seconds = 2\n'
                 "[storage]\nsegment_seconds = 60\nmin_free_bytes = 0\n[clips]\nmax_duration_ms = 120000\n")
    s = config.load(p)
    assert (s.camera.fps, s.camera.width, s.storage.segment_seconds) == (60, 64, 60.0)
    assert isinstance(s.camera.keyframe_seconds, float) and s.camera.keyframe_seconds == 2.0


def test_every_problem_is_reported_at_once(tmp_path):
    p = problems("[camera]\nfps = 0\nwidth = 3\n[audio]\nbitrate = \"x\"\n[storage]\nnope = 1\n[camra]\n", tmp_path)
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
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def test_config_check_exit_codes(tmp_path):
    good = run_cli("config", "check", str(SAMPLE))
    assert good.returncode == 0 and "ok" in good.stdout and good.stderr == ""
    bad = tmp_path / "bad.toml"
    bad.write_text("[camera]\nfps = 0\nsource = \"webcam\"\n")
    out = run_cli("config", "check", str(bad))
    assert out.returncode != 0 and out.stdout == ""
    assert f"{bad}: camera.fps: must be at least 1" in out.stderr
    assert f"{bad}: camera.source: must be one of" in out.stderr
    missing = run_cli("config", "check", str(tmp_path / "absent.toml"))
    assert missing.returncode != 0 and "absent.toml" in missing.stderr and "not found" in missing.stderr


@pytest.mark.parametrize("text,key", [
    ("[storage]\ndir = \"{state}\"\nmax_bytes = -1\n", "storage.max_bytes"),
    ("[storage]\ndir = \"{state}\"\n[camera]\nsource = \"webcam\"\n", "camera.source"),
    ("[storage]\ndir = \"{state}\"\n[camera\n", "<syntax>"),
])
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
