"""The ids edged gives events and recall requests, in one place: how they are made and how they
are recognised (the CLI and the control socket take nothing else as a clip id).

An event's id is the press's wall time and 6 random hex digits (``20240501T143000Z-1a2b3c``); a
recall's clip is ``recall-<request id>``, the request id being the operator's file name or one
made like an event's.
"""

from __future__ import annotations

import os
import re

from edged.core.timefmt import compact

#: A marked event's id (and its clip's).
EVENT_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}")
#: A recall request's id: a plain name (the synced file's name without ``.json``).
RECALL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The clip of a recall request is ``recall-<id>``.
RECALL_CLIP_PREFIX = "recall-"
#: Any clip's id: an event's or a recall's.
CLIP_ID = re.compile(rf"{EVENT_ID.pattern}|{RECALL_CLIP_PREFIX}{RECALL_ID.pattern}")


def timed_id(wall_ns: int) -> str:
    """A new id for something that happened at ``wall_ns`` (an event, a recall without a name).

    The 6 hex digits are 3 bytes of ``os.urandom``, as random as the first 6 of a ``uuid4`` (also
    ``os.urandom``) without importing ``uuid``: it brings ``platform``, about 2 ms of every start."""
    return f"{compact(wall_ns)}-{os.urandom(3).hex()}"
