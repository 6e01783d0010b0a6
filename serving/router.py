"""Champion/challenger routing: which arm answers a request, decided by a deterministic hash.

`split`: a routing key (client id header, else the symbol) is hashed with a salt into one of 10,000
buckets; buckets below `challenger_percent * 100` go to the challenger. The same key always lands on
the same arm (across processes and restarts: blake2b, not Python's salted `hash`), so a client sees
one model consistently. `shadow`: the champion answers, the challenger scores the same request and
only its log record is kept. `champion_only`, or no challenger loaded: the champion answers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from serving.config import RoutingConfig

BUCKETS = 10_000


def bucket(key: str, salt: str) -> int:
    """Deterministic bucket in [0, 10000) of `key`."""
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True)
class Route:
    served: str  # arm whose answer is returned: "champion" | "challenger"
    shadow: str | None  # arm scored and logged only, or None


class Router:
    """Pure routing decision; `has_challenger` says whether a challenger is loaded right now."""

    def __init__(self, cfg: RoutingConfig):
        self.cfg = cfg
        self._threshold = round(cfg.challenger_percent * BUCKETS / 100)

    def route(self, key: str, has_challenger: bool) -> Route:
        if not has_challenger or self.cfg.mode == "champion_only":
            return Route("champion", None)
        if self.cfg.mode == "shadow":
            return Route("champion", "challenger")
        return Route("challenger" if bucket(key, self.cfg.salt) < self._threshold else "champion", None)
