"""The upload contract's limits, in one place.

Every other module (config defaults, clip splitting, uploaders, tests) reads these names;
none of them repeats the numbers. Source: ../shared/reference/ (Sonoran CAD v2 and legacy
bodycam upload pages, Sonoran v2 OpenAPI).
"""

from __future__ import annotations

#: Largest file either Sonoran endpoint accepts.
MAX_UPLOAD_BYTES = 6_000_000
#: ``durationMs`` must lie in this closed range.
MIN_DURATION_MS = 1
MAX_DURATION_MS = 120_000
#: Only WebM is accepted.
UPLOAD_EXTENSION = ".webm"
#: Requests per rolling minute per API key (Sonoran v2; shared by every client using the key).
REQUESTS_PER_MINUTE = 30
RATE_WINDOW_S = 60
#: Uploaded bodycam minutes per rolling 24 h, per plan (the community's allowance).
PLAN_MINUTES = {"free": 10, "standard": 100, "pro": 1000}
ALLOWANCE_WINDOW_S = 24 * 3600

#: The recommended recording target (what Sonoran's own client records).
TARGET_WIDTH = 960
TARGET_HEIGHT = 540
TARGET_FPS = 10
TARGET_VIDEO_BITRATE = 300_000
TARGET_AUDIO_BITRATE = 64_000

#: Our own margin: no 120 s span of recorded footage may exceed this (5 % under the cap),
#: so a maximal clip cut from whole segments still uploads.
SPAN_120S_BUDGET_BYTES = 5_700_000
