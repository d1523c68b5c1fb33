"""Configuration: defaults, the sample file, and every kind of bad input named by its key."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edged import config, limits
from tests.conftest import REPO


def problems(text: str, tmp_path: Path) -> dict[str, str]:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(config.ConfigError) as exc:
        config.load(p)
    return dict(exc.value.problems)


def test_defaults_follow_the_sonoran_target():
    s = config.Settings()
    assert (s.camera.width, s.camera.height, s.camera.fps) == \
        (limits.TARGET_WIDTH, limits.TARGET_HEIGHT, limits.TARGET_FPS) == (960, 540, 10)
    assert s.camera.bitrate == limits.TARGET_VIDEO_BITRATE == 300_000
    assert s.audio.bitrate == limits.TARGET_AUDIO_BITRATE == 64_000
    assert s.storage.segment_seconds == 10.0
    assert s.clips.max_bytes == limits.MAX_UPLOAD_BYTES and s.clips.max_duration_ms == limits.MAX_DURATION_MS
    assert (s.clips.pre_roll_seconds, s.clips.post_roll_seconds) == (30.0, 30.0)


def test_sample_config_is_valid_and_equals_the_embedded_defaults():
    path = REPO / "configs" / "edged.toml"
    s = config.load(path)
    defaults = config.Settings()
    raw = tomllib.loads(path.read_text())
    for section, table in raw.items():
        for key in table:
            assert getattr(getattr(s, section), key) == getattr(getattr(defaults, section), key), f"{section}.{key}"
    # Every key of the schema is documented in the sample (commented keys count).
    text = path.read_text()
    for dotted, _, _ in config.describe():
        assert dotted.split(".")[1] in text, f"{dotted} missing from configs/edged.toml"


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(config.ConfigError) as exc:
        config.load(tmp_path / "nope.toml")
    assert exc.value.problems == [("<file>", "not found")] and "nope.toml" in str(exc.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(config.ConfigError) as exc:
        config.load(tmp_path)  # a directory
    assert exc.value.problems[0][0] == "<file>" and "cannot be read" in exc.value.problems[0][1]
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[device]\nid = "caf\xe9"\n')
    with pytest.raises(config.ConfigError) as exc:
        config.load(bad)
    assert "UTF-8" in str(exc.value)


def test_syntax_error_says_where(tmp_path):
    p = problems("[camera\nfps = 10\n", tmp_path)
    assert "<syntax>" in p and "line 1" in p["<syntax>"]


def test_unknown_section_and_key(tmp_path):
    p = problems("[camra]\nfps = 10\n[storage]\nsizee = 1\n", tmp_path)
    assert "unknown section" in p["camra"]
    assert "unknown key" in p["storage.sizee"] and "max_bytes" in p["storage.sizee"]


@pytest.mark.parametrize("line,key,words", [
    ('[camera]\nfps = "ten"', "camera.fps", "must be an integer"),
    ("[camera]\nfps = true", "camera.fps", "must be an integer"),
    ("[camera]\npaced = 1", "camera.paced", "true or false"),
    ("[camera]\nkeyframe_seconds = \"2\"", "camera.keyframe_seconds", "must be a number"),
    ("[device]\nid = 7", "device.id", "must be a string"),
    ("[camera]\nfps = 0", "camera.fps", "at least 1"),
    ("[camera]\nwidth = 961", "camera.width", "even"),
    ("[camera]\nbitrate = 1000", "camera.bitrate", "at least"),
    ("[camera]\nsource = \"webcam\"", "camera.source", "one of auto, picamera2"),
    ("[audio]\nsource = \"pulse\"", "audio.source", "one of"),
    ("[storage]\nsegment_seconds = 600", "storage.segment_seconds", "at most"),
    ("[clips]\npre_roll_seconds = 121", "clips.pre_roll_seconds", "at most 120"),
    ("[clips]\nmax_bytes = 7000000", "clips.max_bytes", "at most 6000000"),
    ("[clips]\nmax_duration_ms = 130000", "clips.max_duration_ms", "at most 120000"),
    ("[camera]\nsource = \"file\"", "camera.device", "must name the video file"),
    ("camera = 3", "camera", "must be a table"),
    ("[clips]\nmax_duration_ms = 8000", "camera.keyframe_seconds", "do not fit clip parts"),
])
def test_bad_values_name_the_key_and_reason(tmp_path, line, key, words):
    p = problems(line + "\n", tmp_path)
    assert key in p, p
    assert words in p[key], p[key]


def test_every_problem_is_reported_at_once(tmp_path):
    p = problems("[camera]\nfps = 0\nwidth = 3\n[audio]\nbitrate = \"x\"\n[storage]\nnope = 1\n", tmp_path)
    assert set(p) == {"camera.fps", "camera.width", "audio.bitrate", "storage.nope"}


def test_budget_too_small_for_three_segments(tmp_path):
    p = problems("[storage]\nmax_bytes = 10000000\nsegment_seconds = 60\n[camera]\nbitrate = 8000000\n", tmp_path)
    assert "storage.max_bytes" in p


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, timeout=60)


def test_config_check_exit_codes(tmp_path):
    good = run_cli("config", "check", str(REPO / "configs" / "edged.toml"))
    assert good.returncode == 0 and "ok" in good.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[camera]\nfps = 0\n")
    out = run_cli("config", "check", str(bad))
    assert out.returncode != 0 and "camera.fps" in out.stderr


def test_run_refuses_a_bad_config_before_touching_storage(tmp_path):
    bad = tmp_path / "bad.toml"
    state = tmp_path / "state"
    bad.write_text(f'[storage]\ndir = "{state}"\nmax_bytes = -1\n')
    out = run_cli("run", "--config", str(bad))
    assert out.returncode == 78 and "storage.max_bytes" in out.stderr
    assert not state.exists()
