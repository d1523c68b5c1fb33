"""Every state and alarm name edged stores, shows or logs, in one place.

They are ``StrEnum``s: a member *is* its string, so the SQLite stores (whose ``CHECK`` constraints
list the same words), ``status.json``, ``edged status`` and the journal keep the words they always
had, while the code names them once and a typo is an ``AttributeError`` instead of a state nobody
ever reaches.
"""

from __future__ import annotations

from enum import StrEnum


class SegmentState(StrEnum):
    """A segment's row in the index (``footage.index``)."""

    WRITING = "writing"  # being recorded (a ``.part`` on disk)
    FINAL = "final"  # finished, renamed, fsynced
    SALVAGED = "salvaged"  # cut off by a crash, recovered up to its last whole frame
    EVICTED = "evicted"  # overwritten by the ring buffer
    LOST = "lost"  # gone or unrecoverable


class RecorderState(StrEnum):
    """What the recorder is doing (``status.json``'s ``state``)."""

    STARTING = "starting"
    RECORDING = "recording"
    CAMERA_LOST = "camera_lost"
    STORAGE_FULL = "storage_full"
    STOPPED = "stopped"


class EventState(StrEnum):
    """A marked event (``events.sqlite``)."""

    OPEN = "open"  # its post-roll is still being recorded (or extended by a press)
    BUILT = "built"  # its clip is built and queued
    FAILED = "failed"  # no clip could be built (the reason is stored)


class RecallState(StrEnum):
    """A recall request (``recall.sqlite`` and ``status/recall-<id>.json``)."""

    PENDING = "pending"  # accepted, its footage held, waiting for the window to be recorded
    PROCESSING = "processing"  # being built, then uploading
    COMPLETED = "completed"  # every part delivered to every target
    FAILED = "failed"  # with the reason
    REJECTED = "rejected"  # answered, never stored


class AudioOff(StrEnum):
    """Why a span of the recording holds no sound (``footage.index``'s ``audio_gaps``, manifests)."""

    PRE_EVENT = "pre-event"  # no event open and ``audio.pre_event`` off: video only, audio from the press
    MUTED = "muted"  # the wearer muted it (``edged mute``, a button gesture)


class AudioRecorded(StrEnum):
    """Whether a clip's audio was recorded (its manifest, a recall's status)."""

    RECORDED = "recorded"  # sound throughout
    PARTIAL = "partial"  # sound in parts; the manifest lists the spans without
    NONE = "none"  # no sound at all (pre-event, muted, no microphone, a timelapse)
    UNKNOWN = "unknown"  # footage recorded before the spans were kept (an older edged, a rebuilt index)


class DeliveryState(StrEnum):
    """One part to one target (``outbox.sqlite``)."""

    QUEUED = "queued"
    SENDING = "sending"
    DELIVERED = "delivered"
    DEFERRED = "deferred"  # waits for a time (back-off, Retry-After, the allowance)
    FAILED = "failed"  # refused for good; the file is kept


class GpsFix(StrEnum):
    """What the position source says of the fix (``PositionSource.fix_status``, status, doctor,
    manifests). No fix is always one of the last three words, never a guessed position."""

    FIX_3D = "3d"  # latitude, longitude and altitude
    FIX_2D = "2d"  # latitude and longitude
    NO_FIX = "no-fix"  # gpsd answers, but no current fix (no receiver, no sky, or the last one is stale)
    NO_GPSD = "no-gpsd"  # gpsd cannot be reached (or broke the protocol and is being reconnected)
    OFF = "off"  # gps.enabled = false


class CallNoteState(StrEnum):
    """A clip's note on the unit's current Sonoran call (``call_notes`` in ``outbox.sqlite``)."""

    QUEUED = "queued"  # the clip is delivered to Sonoran v2; its note is due
    SENDING = "sending"  # the note may have reached the server (a restart sends it again, counted)
    DEFERRED = "deferred"  # waits for a time (back-off, Retry-After, a refused key)
    NOTED = "noted"  # the note is on the call (its call id kept)
    NO_CALL = "no_call"  # the unit had no current call: nothing sent
    TOO_OLD = "too_old"  # the clip is older than the link window: the current call is not its call
    FAILED = "failed"  # refused for good (the server's reason kept)


class Alarm(StrEnum):
    """The device's alarms (``edged status``, ``status.json``, the LED, the journal's ``EDGED_ALARM``)."""

    # recording and storage
    CAMERA_LOST = "camera_lost"
    CAMERA_STALLED = "camera_stalled"
    STORAGE_FULL = "storage_full"  # only protected footage is left: recording pauses
    STORAGE_OVER_BUDGET = "storage_over_budget"  # only protected footage is left to evict: recording goes on
    STORAGE_ERROR = "storage_error"
    CPU_STARVED = "cpu_starved"  # recording cannot keep up with the camera: frames dropped evenly
    GPIO_ERROR = "gpio_error"
    # uploads
    UPLOAD_PAUSED = "upload_paused"  # a key or an account is refused: the target waits
    UPLOAD_FAILED = "upload_failed"  # a part was refused for good (kept)
    UPLOAD_CAPTIVE_PORTAL = "upload_captive_portal"  # a 2xx that is not the contract's answer
    UPLOAD_REDIRECTED = "upload_redirected"  # redirects in a row; never followed
    UPLOAD_STALLED = "upload_stalled"  # a request ran past its overall deadline
    DELIVERY_FOLDER_REFUSED = "delivery_folder_refused"  # a link where a delivery folder belongs
    # the Sonoran unit
    PANIC_NOT_SENT = "panic_not_sent"  # the server refused the unit's panic for good (key, body): not in CAD
    # the synced folder
    SYNC_FOLDER_REFUSED = "sync_folder_refused"  # a link (or worse) where status/, recall/ belongs


#: Alarms the LED shows as a fault: evidence is not being kept or cannot leave the device. (A refused
#: synced folder is the fleet's to fix, not the wearer's: status and journal only.)
FAULT_ALARMS = frozenset(
    {
        Alarm.STORAGE_FULL,
        Alarm.STORAGE_ERROR,
        Alarm.CAMERA_LOST,
        Alarm.CAMERA_STALLED,
        Alarm.UPLOAD_PAUSED,
        Alarm.PANIC_NOT_SENT,
    }
)
