"""Audio privacy end to end: a real daemon records real VP8/Opus segments from the synthetic camera
and tone; the ring's decoded sound is silence until a press, the tone from the press's own sample,
silence again after the post-roll or while muted; the manifest lists the spans; A/V sync and the
segment joins stay exact across every switch.

The decoded audio is placed on the recording's timeline by the segment's index row (its first video
frame) and the decoded frames' own timestamps, independent of edged's readers. (Checked against the
tone's once-a-second beep: the beeps land within 1 ms of whole seconds.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np

from edged.app.daemon import Daemon
from edged.core.paths import StatePaths
from edged.core.timefmt import iso, parse_iso_ns
from edged.events.store import EventStore
from edged.footage.index import Index
from edged.recording.encode import OPUS_FRAME_MS
from tests.support import packets, wait_until

SMALL = {"width": 320, "height": 180, "bitrate": 120_000}
MS = 1_000_000
S = 1_000_000_000
#: The switch lands within one 20 ms Opus frame of the press (the brief's bound).
SWITCH_MS = 20
#: After a switch to silence the Opus frame holding the switch fades the sound before it out.
TAIL_MS = 60
#: -60 dBFS: where sound starts (an onset is searched for after digital silence).
QUIET = 1e-3
#: -50 dBFS: the codec's residue after the fade-out stays below it (measured: at most -59.6 dBFS)
#: until it reaches silence (below -80 dBFS: audio_gate's pattern decodes there) within a second.
RESIDUE = 10 ** (-50 / 20)
#: -80 dBFS: silence (audio_gate's one-step pattern) decodes below it (measured: at most -90 dBFS).
STEP = 10 ** (-80 / 20)
#: The synthetic tone is 440 Hz at 1/8 of full scale: far above this in every 100 ms.
TONE = 0.05


class Track:
    """The decoded sound of every stored segment, on the recording's monotonic timeline."""

    def __init__(self, state_dir: Path) -> None:
        self.pieces: list[tuple[int, np.ndarray]] = []
        self.rows = Index(StatePaths(state_dir).index).stored()
        for row in self.rows:
            path = state_dir / "segments" / row.name
            with av.open(str(path)) as c:
                v0 = next(p for p in c.demux(c.streams.video[0]) if p.size).pts * c.streams.video[0].time_base
            with av.open(str(path)) as c:
                frames = list(c.decode(audio=0))
            if not frames:  # a stop right after a segment began: a packet or two, all pre-skip
                continue
            start = row.mono_start_ns + round((frames[0].pts * frames[0].time_base - v0) * 1e9)
            self.pieces.append((start, np.concatenate([f.to_ndarray()[0] for f in frames])))

    def samples(self, a: int, b: int) -> np.ndarray:
        out = []
        for start, x in self.pieces:
            i = max(0, (a - start) * 48_000 // 1_000_000_000)
            j = min(len(x), max(0, (b - start) * 48_000 // 1_000_000_000))
            if j > i:
                out.append(x[i:j])
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def peak(self, a: int, b: int) -> float:
        x = self.samples(a, b)
        assert len(x) > 0, f"no decoded audio in [{a}, {b})"
        return float(np.abs(x).max())

    def tone_throughout(self, a: int, b: int) -> bool:
        """Every 100 ms of [a, b) carries the tone."""
        return all(self.peak(t, min(t + 100 * MS, b)) > TONE for t in range(a, b - 10 * MS, 100 * MS))

    def first_loud(self, a: int, b: int) -> int | None:
        """The first instant in [a, b) louder than -60 dBFS."""
        for start, x in self.pieces:
            i = max(0, (a - start) * 48_000 // 1_000_000_000)
            j = min(len(x), max(0, (b - start) * 48_000 // 1_000_000_000))
            loud = np.nonzero(np.abs(x[i:j]) > QUIET)[0] if j > i else []
            if len(loud):
                return start + (i + int(loud[0])) * 1_000_000_000 // 48_000
        return None

    @property
    def start(self) -> int:
        return self.pieces[0][0]

    @property
    def end(self) -> int:
        return self.pieces[-1][0] + len(self.pieces[-1][1]) * 1_000_000_000 // 48_000


def assert_joins_exact(state_dir: Path, fps: int = 10) -> None:
    """Video at exact frame steps, audio packets contiguous within and across segments, each
    segment's audio starting within one Opus frame of its video (as test_recording checks)."""
    spans = []
    rows = Index(StatePaths(state_dir).index).stored()
    for n, row in enumerate(rows):
        f = state_dir / "segments" / row.name
        v, a = packets(f, "video"), packets(f, "audio")
        if not len(a.pts_ms):  # a stop right after a cut: a frame, its sound not yet captured
            assert n == len(rows) - 1, f"{row.name}: no sound in a segment before the last"
            continue
        assert set(np.diff(v.pts_ms).tolist()) <= {1000 // fps}, f"{row.name}: frames not at exact steps"
        continued = n > 0 and row.mono_start_ns - (rows[n - 1].mono_start_ns + rows[n - 1].duration_ns) < MS
        if continued:  # (a run's first segment: its sound starts when the microphone's first block does)
            assert abs(a.pts_ms[0] - v.pts_ms[0]) <= OPUS_FRAME_MS + 1, f"{row.name}: audio starts off its video"
        ends = [p + d for p, d in zip(a.pts_ms, a.durations_ms)]
        gaps = [p - e for p, e in zip(a.pts_ms[1:], ends[:-1])]
        assert all(abs(g) <= 1 for g in gaps), f"{row.name}: audio packets not contiguous"
        origin_ms = row.mono_start_ns // MS - v.pts_ms[0]
        spans.append((row.boot_id, origin_ms + a.pts_ms[0], origin_ms + ends[-1]))
    for (boot, _, end), (next_boot, start, _) in zip(spans, spans[1:]):
        if boot == next_boot and start - end < 1000:  # the same run: joined exactly
            assert abs(start - end) <= 1, f"audio join off by {start - end} ms"


def manifest(state_dir: Path, clip_id: str) -> dict:
    return json.loads((state_dir / "clips" / clip_id / "manifest.json").read_text())


def built(state_dir: Path, event_id: str) -> bool:
    e = EventStore(StatePaths(state_dir).events).get(event_id)
    return e is not None and e.state != "open"


def run_in_thread(settings, **kw) -> tuple[Daemon, threading.Thread]:
    d = Daemon(settings, **kw)
    t = threading.Thread(target=d.run, name="daemon-under-test")
    t.start()
    assert d.wait_ready(30), "daemon not ready"
    return d, t


def frames(d: Daemon) -> int:
    return d.recorder.status.frames_encoded if d.recorder else 0


def stop_after_the_event(d: Daemon, t: threading.Thread, state_dir: Path, event_id: str, then_s: float) -> None:
    """Wait for the event's clip (its post-roll is recorded), go on ``then_s`` of footage past the
    post-roll's end, then stop: on states, so a slow poll cannot move the mark past a fixed stop."""
    wait_until(lambda: built(state_dir, event_id), 60, "clip built")
    post_roll_end = EventStore(StatePaths(state_dir).events).get(event_id).end_mono_ns
    wait_until(lambda: d.recorder.timeline_now_ns() >= post_roll_end + then_s * S, 30, "footage after the post-roll")
    d.stop()
    t.join(60)
    assert not t.is_alive(), "daemon did not stop"


def gaps_of(state_dir: Path) -> list:
    idx = Index(StatePaths(state_dir).index)
    return [g for row in idx.stored()[:1] for g in idx.audio_gaps(row.boot_id, 0, 2**62)]


def test_video_only_until_the_press_then_sound_from_its_sample(settings_factory):
    """Paced (real time, as on a device): silence before the press, the tone from the press's own
    sample to the end of the post-roll, silence after; the joins exact; the manifest's spans."""
    s = settings_factory(
        camera=SMALL | {"paced": True},
        clips={"pre_roll_seconds": 3.0, "post_roll_seconds": 3.0},
        storage={"segment_seconds": 2.0},
    )
    assert s.audio.pre_event is False, "the default is video only before a press"
    d, t = run_in_thread(s)
    wait_until(lambda: frames(d) >= 50, 30, "5 s of footage")
    assert d.status().audio == "pre-event"
    result = d.mark("cli")
    wait_until(lambda: d.status().audio == "recording", 5, "sound on after the press")
    # A recall of the minute up to 1.5 s after the press says the same of its sound.
    offset = d.recorder.best_offset_ns()
    recall_end = d.recorder.timeline_now_ns() + offset + 1_500 * MS
    d.recall.submit({"start_time": iso(recall_end - 60 * S), "duration": 1, "recall_type": "regular"}, "audio")
    wait_until(lambda: (d.recall.status("audio") or {}).get("audio"), 30, "recall built")
    stop_after_the_event(d, t, s.state_dir, result.event_id, then_s=2.5)
    press = EventStore(StatePaths(s.state_dir).events).marks(result.event_id)[0].mono_ns
    end = press + 3_000 * MS
    track = Track(s.state_dir)

    # Before the press: silence, no sample reaching -80 dBFS.
    before = track.samples(track.start, press - SWITCH_MS * MS)
    assert len(before) > 4 * 48_000 and np.abs(before).max() < STEP, "sound stored before the press"
    # Sound from the press's own sample (within one 20 ms Opus frame), the tone to the post-roll's end.
    onset = track.first_loud(press - 500 * MS, press + 500 * MS)
    assert onset is not None and abs(onset - press) <= SWITCH_MS * MS, (onset, press)
    assert track.tone_throughout(press + SWITCH_MS * MS, end - SWITCH_MS * MS)
    # After the post-roll: the codec's tail, then silence; digital silence once it has faded.
    assert track.peak(end - 100 * MS, end - SWITCH_MS * MS) > TONE
    assert track.peak(end + TAIL_MS * MS, end + 1_000 * MS) < RESIDUE
    after = track.samples(end + 1_000 * MS, track.end)
    assert len(after) > 48_000 and np.abs(after).max() < STEP, "sound stored after the post-roll"

    assert_joins_exact(s.state_dir)
    gaps = gaps_of(s.state_dir)
    assert [g.reason for g in gaps] == ["pre-event", "pre-event"]
    assert abs(gaps[0].end_mono_ns - press) <= SWITCH_MS * MS and gaps[1].start_mono_ns == end

    audio = manifest(s.state_dir, result.event_id)["audio"]
    assert audio["recorded"] == "partial"
    first, last = audio["not_recorded"]
    assert first["reason"] == last["reason"] == "pre-event" and first["start_ms"] == 0
    clip_start = gaps[0].end_mono_ns - first["end_ms"] * MS  # the clip's first frame on the timeline
    assert abs(clip_start + last["start_ms"] * MS - end) <= MS
    assert audio["not_recorded_ms"] == first["end_ms"] - first["start_ms"] + last["end_ms"] - last["start_ms"]

    status = json.loads((s.state_dir / "recall-status" / "recall-audio.json").read_text())
    recalled = manifest(s.state_dir, "recall-audio")["audio"]
    assert status["audio"]["recorded"] == recalled["recorded"] == "partial"
    assert status["audio"]["not_recorded_ms"] == recalled["not_recorded_ms"] > 4_000
    span = recalled["not_recorded"][0]  # from the recording's start to the press
    assert span["reason"] == "pre-event" and span["start_ms"] == 0
    assert abs(parse_iso_ns(span["wall_end"]) - (gaps[0].end_mono_ns + offset)) < 2 * MS


def cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edged", *args, "--config", str(config)], capture_output=True, text=True, timeout=60
    )


def test_mute_and_unmute_during_an_event(settings_factory, tmp_path):
    """``edged mute on`` and ``edged mute`` (toggle) through the control socket: the muted span is
    in the manifest and in the decoded audio; a mute outside an event is refused (nothing is being
    recorded, and it must not carry into the next event)."""
    s = settings_factory(
        camera=SMALL | {"paced": True},
        clips={"pre_roll_seconds": 2.0, "post_roll_seconds": 12.0},
        storage={"segment_seconds": 2.0},
    )
    config = tmp_path / "edged.toml"
    config.write_text(f'[storage]\ndir = "{s.state_dir}"\n')
    d, t = run_in_thread(s)
    wait_until(lambda: frames(d) >= 25, 30, "footage")
    refused = cli(config, "mute", "on")
    assert refused.returncode == 1 and "no event is open" in refused.stderr, refused
    assert d.status().audio == "pre-event"
    result = d.mark("cli")
    wait_until(lambda: frames(d) >= 50, 30, "sound in the event")
    before = d.recorder.timeline_now_ns()
    muted = cli(config, "mute", "on")
    after = d.recorder.timeline_now_ns()
    assert muted.returncode == 0 and "audio muted" in muted.stdout, muted
    assert d.status().audio == "muted"
    wait_until(lambda: frames(d) >= 95, 30, "a muted stretch")
    before_un = d.recorder.timeline_now_ns()
    unmuted = cli(config, "mute")  # a toggle
    after_un = d.recorder.timeline_now_ns()
    assert unmuted.returncode == 0 and "audio unmuted" in unmuted.stdout, unmuted
    assert d.status().audio == "recording"
    stop_after_the_event(d, t, s.state_dir, result.event_id, then_s=0.5)

    gaps = gaps_of(s.state_dir)
    assert [g.reason for g in gaps] == ["pre-event", "muted", "pre-event"]
    mute, unmute = gaps[1].start_mono_ns, gaps[1].end_mono_ns
    assert before <= mute <= after and before_un <= unmute <= after_un
    press = EventStore(StatePaths(s.state_dir).events).marks(result.event_id)[0].mono_ns

    track = Track(s.state_dir)
    assert track.tone_throughout(press + SWITCH_MS * MS, mute - SWITCH_MS * MS)
    assert track.peak(mute + TAIL_MS * MS, unmute - SWITCH_MS * MS) < RESIDUE
    assert np.abs(track.samples(mute + 1_000 * MS, unmute - SWITCH_MS * MS)).max() < STEP, "sound stored while muted"
    onset = track.first_loud(unmute - 500 * MS, unmute + 500 * MS)
    assert onset is not None and abs(onset - unmute) <= SWITCH_MS * MS, (onset, unmute)
    assert unmute + 1_000 * MS < press + 12_000 * MS, "unmuted before the post-roll's end"
    assert track.tone_throughout(unmute + SWITCH_MS * MS, press + 12_000 * MS - SWITCH_MS * MS)
    assert_joins_exact(s.state_dir)

    audio = manifest(s.state_dir, result.event_id)["audio"]
    assert audio["recorded"] == "partial"
    assert [x["reason"] for x in audio["not_recorded"]] == ["pre-event", "muted", "pre-event"]
    m = audio["not_recorded"][1]
    clip_start = gaps[0].end_mono_ns - audio["not_recorded"][0]["end_ms"] * MS
    assert abs(clip_start + m["start_ms"] * MS - mute) <= MS and abs(clip_start + m["end_ms"] * MS - unmute) <= MS


def test_pre_event_on_records_sound_throughout(settings_factory):
    s = settings_factory(
        camera=SMALL,
        audio={"pre_event": True},
        clips={"pre_roll_seconds": 2.0, "post_roll_seconds": 2.0},
        storage={"segment_seconds": 2.0},
    )
    d, t = run_in_thread(s)
    wait_until(lambda: frames(d) >= 40, 30, "footage")
    result = d.mark("cli")
    stop_after_the_event(d, t, s.state_dir, result.event_id, then_s=1.0)
    track = Track(s.state_dir)
    assert track.tone_throughout(track.start + 20 * MS, track.end - 20 * MS)
    assert gaps_of(s.state_dir) == []
    audio = manifest(s.state_dir, result.event_id)["audio"]
    assert audio == {"recorded": "recorded", "not_recorded_ms": 0, "not_recorded": []}
    assert_joins_exact(s.state_dir)


def test_restart_between_the_mark_and_the_clip_keeps_the_spans(settings_factory):
    s = settings_factory(
        camera=SMALL | {"paced": True},
        clips={"pre_roll_seconds": 3.0, "post_roll_seconds": 6.0},
        storage={"segment_seconds": 2.0},
    )
    d, t = run_in_thread(s)
    wait_until(lambda: frames(d) >= 45, 30, "footage")
    result = d.mark("cli")
    wait_until(lambda: frames(d) >= 60, 30, "some of the post-roll")
    d.stop()
    t.join(60)
    assert EventStore(StatePaths(s.state_dir).events).get(result.event_id).state == "open"
    d, t = run_in_thread(s)
    try:
        wait_until(lambda: built(s.state_dir, result.event_id), 60, "event finished after the restart")
    finally:
        d.stop()
        t.join(60)
    press = EventStore(StatePaths(s.state_dir).events).marks(result.event_id)[0].mono_ns
    end = press + 6_000 * MS
    audio = manifest(s.state_dir, result.event_id)["audio"]
    assert audio["recorded"] == "partial", audio
    first = audio["not_recorded"][0]
    assert first["reason"] == "pre-event" and first["start_ms"] == 0 and first["end_ms"] >= 2_900, audio
    # The second run is inside the post-roll: sound from its first frame to the event's end.
    track = Track(s.state_dir)
    rows = track.rows  # the second run's first segment: the first not starting where the one before ended
    start2 = next(r.mono_start_ns for p, r in zip(rows, rows[1:]) if r.mono_start_ns != p.mono_start_ns + p.duration_ns)
    assert start2 < end and track.tone_throughout(start2 + 100 * MS, end - SWITCH_MS * MS)
    assert np.abs(track.samples(track.start, press - SWITCH_MS * MS)).max() < STEP
