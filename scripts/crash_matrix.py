#!/usr/bin/env python3
"""Crash matrix: the real daemon, killed at random moments, many times; the invariants after each restart.

Each trial starts a fresh state folder, the contract server (tests/contract/sonoran_server.py, in this
process so every upload it accepts is counted) and the real ``edged run`` as a subprocess
(synthetic camera and tone, paced, so marks and kills are on the wall clock: footage lost is
measured against the moment of the kill). Uploads go to ``sonoran_v2`` and the ``directory`` target.
Then, a few times, one of:

  recording  random marks, a kill at a random moment (any point of a segment, boundaries too)
  clip       a mark, a kill around the end of its post-roll (the clip being built)
  upload     a mark, a kill while a part is being sent: mid-body, or after the server accepted it
             and before its answer arrived (the server holds the answer: a certain duplicate)

followed by ``SIGKILL`` (``--power-cut``: the state folder is an ext4 image and everything it had not
written to its block device is lost; see scripts/crash_disk.py), a restart, and the checks:

  * the index matches the folder, every finalized segment decodes to its recorded frame count
  * footage lost at the kill: from the end of what was kept to the kill
  * no footage held for an undelivered event is gone, no part the outbox had is gone
At the end the daemon runs until every marked event is delivered, stops on SIGTERM (exit 0), and
every part must be at both targets, intact (sha256 of what the server stored, the directory copy);
duplicates are uploads the server accepted more than once (at-least-once delivery), and must not
exceed what edged counted as resends.

    .venv/bin/python scripts/crash_matrix.py [--trials 50] [--seed S] [--power-cut] [--json PATH]

The seed fixes the schedule (phases, delays, marks); trial i uses seed + i, so ``--seed S+i
--trials 1`` replays one trial's schedule (the kernel's timing is not replayed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edged.app.control import ControlError, request
from edged.core.paths import StatePaths
from scripts import crash_checks as checks
from scripts.crash_disk import DiskUnavailable, make_disk, remove_tree
from tests.contract.sonoran_server import SonoranServer

KEY = "crash-matrix-key"
ACCOUNT = "9d0c7a52-3f0e-4c61-8d7b-6a1f2e3b4c5d"
TARGETS = ("sonoran_v2", "directory")
PHASES = ("recording", "clip", "upload")
PRE_ROLL_S = POST_ROLL_S = 3.0
#: Longest wait for the daemon to record after a start, and for the backlog at the end.
START_TIMEOUT_S = 45.0
DRAIN_TIMEOUT_S = 150.0
#: What a kill (or a power cut) of a paced recording may cost (README: at most 2 s): more is a violation.
MAX_LOST_S = 2.0
#: A hole in the timeline of a running recording (no kill in it) larger than this is a violation.
MAX_GAP_S = 0.5
#: Chance, before each kill, that the server goes down (or comes back if down): clips pile up,
#: their footage stays held while the ring (10 MB, about 20 s at 4 Mbit/s) overwrites around it.
OUTAGE_TOGGLE_P = 0.3
#: Chance, at each restart, that the daemon is killed again while it starts (reconcile, salvage).
STARTUP_KILL_P = 0.25

Log = Callable[[str], None]


class TrialError(Exception):
    """The daemon did not come up, or did not stop cleanly: the trial cannot go on."""


def write_config(path: Path, state: Path, server_url: str, key_file: Path) -> None:
    path.write_text(f"""
[device]
id = "crash-matrix"
unit_number = "CM-1"
[camera]
source = "synthetic"
paced = true
width = 640
height = 360
bitrate = 4000000
[audio]
source = "synthetic"
[storage]
dir = "{state}"
segment_seconds = 2.0
max_bytes = 10000000
min_free_bytes = 0
[clips]
pre_roll_seconds = {PRE_ROLL_S}
post_roll_seconds = {POST_ROLL_S}
max_duration_ms = 5000
[upload]
targets = {json.dumps(list(TARGETS))}
retry_base_seconds = 0.2
retry_cap_seconds = 2.0
bandwidth_kbps = 16000
[upload.sonoran_v2]
base_url = "{server_url}"
api_key_file = "{key_file}"
account_uuid = "{ACCOUNT}"
plan = "pro"
""")


class DaemonProcess:
    """``edged run`` as a subprocess, its log in a file per start."""

    def __init__(self, cfg: Path, state: Path, logs: Path) -> None:
        self.cfg, self.state, self.logs = cfg, state, logs
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_path: Path | None = None

    def start(self) -> None:
        self.starts += 1
        self.log_path = self.logs / f"run-{self.starts:02d}.log"
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edged", "run", "--config", str(self.cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )

    def _exited(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise TrialError(f"daemon exited with {self.proc.returncode}; log {self.log_path}")

    def status(self) -> dict | None:
        try:
            return request(StatePaths(self.state).control, {"cmd": "status"}, timeout=5)["status"]
        except (ControlError, OSError, ValueError):
            return None

    def wait_recording(self) -> tuple[int, int]:
        """Until the first segment of this run is being written: (its seq, its monotonic start)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self._exited()
            st = self.status()
            if st and st.get("current_segment"):
                seq = int(st["current_segment"].split("_", 1)[0])
                row = checks.query(
                    self.state / "index.sqlite", "SELECT mono_start_ns FROM segments WHERE seq=?", (seq,)
                )
                return seq, row[0][0]
            time.sleep(0.05)
        raise TrialError(f"daemon not recording after {START_TIMEOUT_S:g} s; log {self.log_path}")

    def mark(self, note: str) -> str | None:
        """``edged mark`` through the control socket: the event id, or None if it was not taken."""
        try:
            out = subprocess.run(
                [sys.executable, "-m", "edged", "mark", "--config", str(self.cfg), "--note", note],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=REPO,
            )
        except subprocess.TimeoutExpired:
            return None
        return out.stdout.split()[-1] if out.returncode == 0 and out.stdout.strip() else None

    def kill(self) -> int:
        assert self.proc is not None
        kill_ns = time.monotonic_ns()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return kill_ns

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class KillRecord:
    trial: int
    kill: int
    planned: str
    observed: str  # what was going on at the kill: recording | clip | upload | startup
    lost_s: float | None  # None: killed while starting, before its recording is known
    bytes_dropped: int = 0  # power cut: file data written but not on the block device
    files_lost: int = 0


@dataclass
class TrialResult:
    trial: int
    seed: int
    kills: list[KillRecord] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    marks: int = 0
    events: int = 0
    parts: int = 0
    parts_lost: int = 0
    protected_lost: int = 0
    undecodable: int = 0
    index_mismatches: int = 0
    events_undelivered: int = 0
    duplicates: int = 0
    resends: int = 0
    segments_decoded: int = 0
    segments_evicted: int = 0
    largest_gap_s: float = 0.0
    stray_files: list[str] = field(default_factory=list)
    outages: int = 0
    work: str = ""


def _observed_phase(evs: dict, parts: list[checks.PartRow], now_ns: int) -> str:
    if any(p.state == "sending" for p in parts):
        return "upload"
    if any(st == "open" and end <= now_ns for (_b, _s, end, st, _r) in evs.values()):
        return "clip"
    return "recording"


class Trial:
    def __init__(self, number: int, seed: int, power_cut: bool, kills: int, work: Path, log: Log) -> None:
        self.rng = random.Random(seed)
        self.number, self.power_cut, self.n_kills, self.work, self.log = number, power_cut, kills, work, log
        self.result = TrialResult(number, seed, work=str(work))
        self.disk = make_disk(work, power_cut)
        self.ledger = checks.Ledger(TARGETS)
        self.cache = checks.DecodeCache()
        self.server = SonoranServer(keys={KEY: "pro"}, store_dir=work / "server")
        self.state = self.disk.root
        self.daemon: DaemonProcess | None = None
        self._marks = 0
        self._kills_ns: list[int] = []
        self._server_down = False

    def violation(self, what: str) -> None:
        self.result.violations.append(what)
        self.log(f"  VIOLATION trial {self.number}: {what}")

    def mark(self) -> str | None:
        self._marks += 1
        ev = self.daemon.mark(f"trial {self.number} mark {self._marks}")
        if ev:
            self.ledger.marked.add(ev)
            self.result.marks += 1
        return ev

    # --- before a kill: bring the daemon to the planned phase ---------------------------------------

    def _sleep_until_ns(self, t_ns: int) -> None:
        delay = (t_ns - time.monotonic_ns()) / 1e9
        if delay > 0:
            time.sleep(delay)

    def _recording(self) -> None:
        total = self.rng.uniform(0.3, 6.0)
        if self.rng.random() < 0.6:
            first = self.rng.uniform(0, total)
            time.sleep(first)
            self.mark()
            total -= first
        time.sleep(max(0.0, total))

    def _clip(self) -> None:
        ev = self.mark()
        if ev is None:
            return
        end_ns = checks.events(self.state)[ev][2]
        self._sleep_until_ns(end_ns + int(self.rng.uniform(0.0, 1.2) * 1e9))

    def _upload(self) -> None:
        after_accept = self.rng.random() < 0.5
        accepted = len(self.server.uploads)
        if after_accept:
            self.server.stall_next(1, 6.0)  # judged and recorded at once, answered late
        self.mark()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if after_accept:
                if len(self.server.uploads) > accepted:
                    break
            elif any(p.state == "sending" for p in checks.outbox_rows(self.state)):
                break
            time.sleep(0.03)
        time.sleep(self.rng.uniform(0, 0.2 if after_accept else 0.8))

    # --- the trial ------------------------------------------------------------------------------------

    def run(self) -> TrialResult:
        r = self.result
        self.disk.setup()
        self.server.start()
        key_file = self.work / "api.key"
        key_file.write_text(KEY + "\n")
        key_file.chmod(0o600)
        cfg = self.work / "edged.toml"
        write_config(cfg, self.state, self.server.url, key_file)
        logs = self.work / "logs"
        logs.mkdir()
        self.daemon = DaemonProcess(cfg, self.state, logs)
        try:
            self.daemon.start()
            _seq, run_start = self.daemon.wait_recording()
            for k in range(1, self.n_kills + 1):
                run_start = self._kill_and_restart(k, run_start)
            self._drain_and_stop()
        except TrialError as exc:
            self.violation(str(exc))
        except Exception as exc:  # noqa: BLE001 - the harness's own failure: say so, go on with the next trial
            self.log(traceback.format_exc())
            self.violation(f"harness error: {exc!r}")
        finally:
            self.daemon.ensure_dead()
            self.server.stop()
            fs_problem = self.disk.teardown()
            if fs_problem:
                self.violation(fs_problem)
        return r

    def _toggle_outage(self) -> None:
        if self.rng.random() >= OUTAGE_TOGGLE_P:
            return
        if self._server_down:
            self.server.up()
            self.log("  server back up")
        else:
            self.server.down()
            self.result.outages += 1
            self.log("  server down")
        self._server_down = not self._server_down

    def _kill_and_restart(self, k: int, run_start: int) -> int:
        self._toggle_outage()
        planned = self.rng.choice(PHASES[:2] if self._server_down else PHASES)
        getattr(self, f"_{planned}")()
        _rows, evs, parts = self.ledger.observe(self.state)
        observed = _observed_phase(evs, parts, time.monotonic_ns())
        kill_ns = self.daemon.kill()
        self._kills_ns.append(kill_ns)
        cut = self.disk.after_kill()
        first_seq, new_start = self._restart(k)
        rows = checks.segment_rows(self.state)
        lost = checks.footage_lost_s(rows, kill_ns, run_start)
        rec = KillRecord(self.number, k, planned, observed, round(lost, 3))
        if cut is not None:
            rec.bytes_dropped, rec.files_lost = cut.bytes_dropped, cut.files_lost
        self.result.kills.append(rec)
        self.log(
            f"  kill {k}: planned {planned}, at {observed}; footage lost {lost:.2f} s"
            + (f"; power cut dropped {cut.bytes_dropped} bytes, {cut.files_lost} file(s)" if cut else "")
        )
        if lost > MAX_LOST_S:
            self.violation(f"kill {k} cost {lost:.2f} s of footage (at most {MAX_LOST_S:g} s)")
        self._check_running(first_seq, f"after kill {k}")
        return new_start

    def _restart(self, k: int) -> tuple[int, int]:
        """Start the daemon again; sometimes kill it once more while it starts (reconciling,
        salvaging what the last kill cut off) and start it again. (seq, start) of the run."""
        while True:
            self.daemon.start()
            if self.rng.random() >= STARTUP_KILL_P:
                return self.daemon.wait_recording()
            time.sleep(self.rng.uniform(0.05, 1.5))
            self._kills_ns.append(self.daemon.kill())
            cut = self.disk.after_kill()
            rec = KillRecord(self.number, k, "startup", "startup", None)
            if cut is not None:
                rec.bytes_dropped, rec.files_lost = cut.bytes_dropped, cut.files_lost
            self.result.kills.append(rec)
            self.log(f"  kill {k}': while starting" + (f"; power cut dropped {cut.bytes_dropped} bytes" if cut else ""))

    def _check_running(self, first_seq: int, when: str) -> None:
        problems = checks.settled_folder_problems(self.state, self.cache, first_seq)
        for p in problems:
            self.violation(f"{when}: {p}")
            if "decode" in p or "frames" in p:
                self.result.undecodable += 1
            else:
                self.result.index_mismatches += 1
        parts = checks.outbox_rows(self.state)
        for p in self.ledger.protected_lost(checks.segment_rows(self.state), parts):
            self.result.protected_lost += 1
            self.violation(f"{when}: protected footage lost: {p}")
        for p in self.ledger.parts_missing(parts):
            self.result.parts_lost += 1
            self.violation(f"{when}: {p}")

    def _all_delivered(self) -> bool:
        _rows, evs, parts = self.ledger.observe(self.state)
        done = checks.delivered_clips(parts, TARGETS)
        return all(
            st == "built" and ev in done for ev, (_b, _s, _e, st, _r) in evs.items()
        ) and self.ledger.marked <= set(evs)

    def _drain_and_stop(self) -> None:
        r = self.result
        if self._server_down:
            self.server.up()
            self.log("  server back up")
        if self.mark() is None:  # one event after the last restart, in every trial
            self.violation("the last mark was not taken")
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while not self._all_delivered() and time.monotonic() < deadline:
            if self.daemon.proc.poll() is not None:
                raise TrialError(f"daemon exited with {self.daemon.proc.returncode}; log {self.daemon.log_path}")
            time.sleep(0.5)
        rc = self.daemon.terminate()
        if rc != 0:
            self.violation(f"SIGTERM: exit code {rc} (log {self.daemon.log_path})")
        for p in checks.folder_problems(self.state, self.cache, None):
            self.violation(f"at the end: {p}")
            if "decode" in p or "frames" in p:
                r.undecodable += 1
            else:
                r.index_mismatches += 1
        parts = checks.outbox_rows(self.state)
        for p in self.ledger.protected_lost(checks.segment_rows(self.state), parts):
            r.protected_lost += 1
            self.violation(f"at the end: protected footage lost: {p}")
        d = checks.check_delivery(
            self.ledger, self.state, list(self.server.uploads), self.work / "server", self.state / "delivered"
        )
        for p in d.lost:
            r.parts_lost += 1
            self.violation(f"at the end: {p}")
        for ev in d.undelivered_events:
            r.events_undelivered += 1
            self.violation(f"at the end: event not delivered: {ev}")
        if d.duplicates > d.resends:
            self.violation(f"{d.duplicates} duplicate upload(s) but edged counted only {d.resends} resend(s)")
        r.duplicates, r.resends = d.duplicates, d.resends
        r.parts = len(self.ledger.parts)
        r.events = len(checks.events(self.state))
        r.segments_decoded = self.cache.decoded
        rows = checks.segment_rows(self.state)
        r.segments_evicted = sum(1 for row in rows if row.state == "evicted")
        r.largest_gap_s = round(checks.largest_gap_s(rows, self._kills_ns), 3)
        r.stray_files = checks.stray_files(self.state)
        if r.largest_gap_s > MAX_GAP_S:
            self.violation(f"a {r.largest_gap_s:.2f} s hole in the timeline with no kill in it")


def _summary(results: list[TrialResult], seed: int, power_cut: bool, seconds: float) -> dict:
    kills = [k for r in results for k in r.kills]
    lost = [k.lost_s for k in kills if k.lost_s is not None]
    total = lambda name: sum(getattr(r, name) for r in results)  # noqa: E731
    return {
        "mode": "power_cut" if power_cut else "sigkill",
        "seed": seed,
        "trials": len(results),
        "kills": len(kills),
        "kills_by_phase": dict(Counter(k.observed for k in kills)),
        "footage_lost_per_kill_s": {
            "max": max(lost, default=0.0),
            "median": statistics.median(lost) if lost else 0.0,
            "mean": round(statistics.fmean(lost), 3) if lost else 0.0,
        },
        "max_lost_allowed_s": MAX_LOST_S,
        "bytes_dropped_by_power_cuts": sum(k.bytes_dropped for k in kills),
        "files_lost_by_power_cuts": sum(k.files_lost for k in kills),
        "marks": total("marks"),
        "events": total("events"),
        "parts": total("parts"),
        "parts_lost": total("parts_lost"),
        "protected_lost": total("protected_lost"),
        "undecodable": total("undecodable"),
        "index_mismatches": total("index_mismatches"),
        "events_undelivered": total("events_undelivered"),
        "duplicates": total("duplicates"),
        "resends": total("resends"),
        "segments_decoded": total("segments_decoded"),
        "segments_evicted": total("segments_evicted"),
        "server_outages": total("outages"),
        "stray_temp_files": [f"trial {r.trial}: {f}" for r in results for f in r.stray_files],
        "largest_gap_not_at_a_kill_s": max((r.largest_gap_s for r in results), default=0.0),
        "violations": [f"trial {r.trial} (seed {r.seed}): {v}" for r in results for v in r.violations],
        "seconds": round(seconds, 1),
        "trial_results": [asdict(r) for r in results],
    }


def run(
    trials: int,
    seed: int,
    power_cut: bool,
    kills: tuple[int, int] = (2, 4),
    work: Path | None = None,
    keep: bool = False,
    log: Log = print,
) -> dict:
    """Run ``trials`` trials; return the figures (see ``table``). Raises DiskUnavailable if a power
    cut cannot be simulated here. Work folders of trials with violations are kept (named in them)."""
    base = Path(work) if work else Path(tempfile.mkdtemp(prefix="edged-crash-matrix-"))
    base.mkdir(parents=True, exist_ok=True)
    log(f"crash matrix: {trials} trial(s), seed {seed}, {'power cut' if power_cut else 'SIGKILL'}, work {base}")
    results = []
    t0 = time.monotonic()
    for i in range(trials):
        trial_seed = seed + i
        rng = random.Random(trial_seed)
        n_kills = rng.randint(*kills)
        log(f"trial {i} seed {trial_seed}: {n_kills} kill(s)")
        tdir = base / f"trial-{i:03d}"
        tdir.mkdir()
        result = Trial(i, trial_seed, power_cut, n_kills, tdir, log).run()
        results.append(result)
        log(
            f"trial {i}: {len(result.kills)} kill(s), {result.parts} part(s), {result.duplicates} duplicate(s), "
            f"{len(result.violations)} violation(s)"
        )
        if not result.violations and not keep:
            remove_tree(tdir)
    if not keep and not any(r.violations for r in results):
        remove_tree(base)
    return _summary(results, seed, power_cut, time.monotonic() - t0)


def table(summaries: list[dict]) -> str:
    head = (
        "mode",
        "trials",
        "kills",
        "rec/clip/upload/start",
        "lost/kill max s",
        "median s",
        "parts",
        "parts lost",
        "protected lost",
        "undecodable",
        "index≠folder",
        "events",
        "undelivered",
        "duplicates",
        "resends",
    )
    rows = [head]
    for s in summaries:
        by = s["kills_by_phase"]
        rows.append(
            (
                s["mode"],
                str(s["trials"]),
                str(s["kills"]),
                f"{by.get('recording', 0)}/{by.get('clip', 0)}/{by.get('upload', 0)}/{by.get('startup', 0)}",
                f"{s['footage_lost_per_kill_s']['max']:.2f}",
                f"{s['footage_lost_per_kill_s']['median']:.2f}",
                str(s["parts"]),
                str(s["parts_lost"]),
                str(s["protected_lost"]),
                str(s["undecodable"]),
                str(s["index_mismatches"]),
                str(s["events"]),
                str(s["events_undelivered"]),
                str(s["duplicates"]),
                str(s["resends"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seed", type=int, default=None, help="random when absent (printed either way)")
    ap.add_argument("--power-cut", action="store_true", help="lose unsynced writes at each kill (ext4 image)")
    ap.add_argument("--kills", type=int, nargs=2, default=(2, 4), metavar=("MIN", "MAX"), help="kills per trial")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--work", type=Path, help="work folder (default: a new one in /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep every trial's work folder")
    args = ap.parse_args()
    # Stopped from outside (even from a background job, which starts with SIGINT ignored): clean up,
    # i.e. kill the daemon under test and unmount the image, through the trial's finally blocks.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    print(f"seed {seed}", flush=True)
    try:
        summary = run(
            args.trials,
            seed,
            args.power_cut,
            tuple(args.kills),
            args.work,
            args.keep,
            log=lambda m: print(m, flush=True),
        )
    except DiskUnavailable as exc:
        print(f"crash_matrix: {exc}", file=sys.stderr)
        return 2
    print()
    print(table([summary]))
    print(
        f"segments decoded {summary['segments_decoded']}, evicted by the ring {summary['segments_evicted']}, "
        f"server outages {summary['server_outages']}, largest hole not at a kill "
        f"{summary['largest_gap_not_at_a_kill_s']:.2f} s, stray temporary files {len(summary['stray_temp_files'])}"
        + (f", power cuts dropped {summary['bytes_dropped_by_power_cuts']} written bytes" if args.power_cut else "")
        + f"; {summary['seconds']:.0f} s"
    )
    for v in summary["violations"]:
        print("VIOLATION", v)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
