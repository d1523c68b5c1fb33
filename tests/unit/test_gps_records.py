"""Where a position is written down: a mark in the events store (and a store made before marks had
positions), the word a mark keeps without a fix, the ``unitLocation`` read back from a manifest,
and the status line read back from status.json."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from edged.capture.gps import status_line
from edged.capture.position import Fix, fix_doc, position_doc
from edged.core.states import EventState, GpsFix
from edged.events.store import Event, EventStore, Mark
from edged.upload.sonoran import clip_location

FIX = Fix(lat=51.5034683, lon=-0.1266167, mode=3, wall_s=1710504044.0, alt_m=21.5, received_wall_s=1765082477.5)


class Source:
    """A position source answering as told (the protocol's three questions)."""

    def __init__(self, fix: Fix | None, word: str) -> None:
        self.fix, self.word = fix, word

    def latest(self) -> Fix | None:
        return self.fix

    def fix_status(self) -> str:
        return self.word

    def track(self, start_wall_s: float, end_wall_s: float) -> list[Fix]:
        return []


def test_a_mark_keeps_the_fix_or_the_word_for_none():
    assert position_doc(Source(FIX, "3d")) == {
        "fix": "3d",
        "lat": 51.5034683,
        "lon": -0.1266167,
        "time": "2024-03-15T12:00:44.000Z",
        "received": "2025-12-07T04:41:17.500Z",
        "alt_m": 21.5,
    }
    assert position_doc(Source(None, "no-gpsd")) == {"fix": "no-gpsd"}
    assert position_doc(Source(None, "no-fix")) == {"fix": "no-fix"}
    # A fix that arrived between the two questions is not in hand: none, not a guess.
    assert position_doc(Source(None, "3d")) == {"fix": "no-fix"}
    assert position_doc(None) == {"fix": "off"}
    assert fix_doc(Fix(1.0, 2.0, 2, 1710504044.0))["fix"] == "2d"


def test_marks_store_their_position_and_an_older_store_gains_the_column(tmp_path: Path):
    path = tmp_path / "events.sqlite"
    # A store as edged wrote it before marks had positions.
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE events (id TEXT PRIMARY KEY, boot_id TEXT NOT NULL, start_mono_ns INTEGER NOT NULL,
        end_mono_ns INTEGER NOT NULL, pre_roll_ns INTEGER NOT NULL, post_roll_ns INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('open','built','failed')), reason TEXT NOT NULL DEFAULT '',
        created_wall_ns INTEGER NOT NULL);
        CREATE TABLE marks (event_id TEXT NOT NULL REFERENCES events(id), mono_ns INTEGER NOT NULL,
        wall_ns INTEGER NOT NULL, clock_synced INTEGER NOT NULL, source TEXT NOT NULL, note TEXT NOT NULL DEFAULT '');
        INSERT INTO events VALUES ('old', 'b', 0, 10, 5, 5, 'built', '', 1);
        INSERT INTO marks VALUES ('old', 5, 105, 1, 'cli', 'before GPS');"""
    )
    db.commit()
    db.close()
    ro = EventStore(path, read_only=True)  # read-only: read as it is, no position
    assert ro.marks("old") == [Mark(5, 105, True, "cli", "before GPS", None)]
    ro.close()
    store = EventStore(path)
    assert store.marks("old")[0].position is None
    where = position_doc(Source(FIX, "3d"))
    store.open_event(Event("new", "b", 20, 30, 5, 5, EventState.OPEN, "", 2), Mark(25, 125, True, "button", "", where))
    store.extend("new", 40, Mark(35, 135, True, "cli", "", {"fix": "no-fix"}))
    assert [m.position for m in store.marks("new")] == [where, {"fix": "no-fix"}]
    store.close()
    again = EventStore(path, read_only=True)
    assert again.marks("new")[0].position == where
    again.close()


def manifest(tmp_path: Path, doc: object) -> Path:
    folder = tmp_path / "clip"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return folder


@pytest.mark.parametrize(
    "doc, location",
    [
        ({"marks": [{"position": fix_doc(FIX)}]}, "51.503468,-0.126617"),
        ({"marks": [{"position": {"fix": "no-fix"}}, {"position": fix_doc(FIX)}]}, "51.503468,-0.126617"),
        ({"marks": [{"position": {"fix": "no-gpsd"}}]}, None),
        ({"marks": [{"note": "before GPS"}]}, None),
        ({"parts": []}, None),  # a recall's manifest has no marks
        ({"marks": [{"position": {"lat": float("nan"), "lon": 0.0}}]}, None),
        ({"marks": [{"position": {"lat": 95.0, "lon": 0.0}}]}, None),
        ({"marks": [{"position": {"lat": True, "lon": 0.0}}]}, None),
        ({"marks": "x"}, None),
        ([1, 2], None),
        ("{not json", None),
        ("[" * 100_000, None),
    ],
)
def test_unit_location_is_the_first_marks_fix(tmp_path: Path, doc, location):
    assert clip_location(manifest(tmp_path, doc)) == location


def test_unit_location_without_a_manifest(tmp_path: Path):
    assert clip_location(tmp_path) is None


def test_status_line_from_what_status_json_holds():
    assert status_line({"fix": "3d", "lat": 51.5034683, "lon": -0.1266167, "age_s": 0.4, "gpsd": "127.0.0.1:2947"}) == (
        "3d 51.503468,-0.126617 (0.4 s old, gpsd at 127.0.0.1:2947)"
    )
    assert status_line({"fix": "no-gpsd", "gpsd": "h:1", "problem": "cannot connect: refused"}) == (
        "no-gpsd (gpsd at h:1): cannot connect: refused"
    )
    assert status_line({"fix": "no-fix", "gpsd": "h:1", "lat": "x"}) == "no-fix (gpsd at h:1)"
    assert status_line({"fix": "somewhere"}) == "unknown" and status_line([]) == "unknown"
    assert GpsFix("no-fix") == "no-fix"
