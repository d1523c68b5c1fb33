"""When to try again: the one retry policy (exponential back-off with full jitter and a cap)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from edged.config.schema import UploadSettings
from edged.core import limits

#: The server refused because of the plan's allowance but our own record shows room (other devices
#: of the community upload too): look again after this long.
ALLOWANCE_RECHECK_S = 15 * 60
#: A target paused for a refused key looks at its key file and settings this often (real seconds):
#: a corrected key resumes it within this (``keyfile``: a stat, the file read only when it changed).
PAUSE_POLL_S = 0.5
#: A 429 without Retry-After waits one rate window.
DEFAULT_RETRY_AFTER_S = float(limits.RATE_WINDOW_S)


@dataclass
class RetryPolicy:
    """When a failed delivery is tried again."""

    base_s: float = 2.0
    cap_s: float = 600.0
    auth_retry_s: float = 1800.0
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_settings(cls, u: UploadSettings, rng: random.Random | None = None) -> RetryPolicy:
        return cls(u.retry_base_seconds, u.retry_cap_seconds, u.auth_retry_minutes * 60, rng or random.Random())

    def backoff_s(self, attempts: int) -> float:
        """Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): uniform in
        [0, min(cap, base · 2^(attempts-1))]; attempts counts the failures so far, from 1."""
        ceiling = min(self.cap_s, self.base_s * 2 ** max(0, min(attempts - 1, 40)))
        return self.rng.uniform(0, ceiling)

    def retry_after_s(self, asked: float | None) -> float:
        """Honour the server's Retry-After, plus a little jitter so a fleet does not return at once."""
        wait = DEFAULT_RETRY_AFTER_S if asked is None else asked
        return wait + self.rng.uniform(0, max(1.0, wait * 0.2))
