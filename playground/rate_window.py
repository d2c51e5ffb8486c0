"""A per-client sliding window of events: the count that the chat's rate limit and the login throttle share."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

MAX_CLIENTS = 10_000  # clients a sliding window keeps before it forgets the quiet ones


@dataclass
class SlidingWindow:
    """At most `limit` events per client in any `seconds`: the count the rate limit and the login throttle
    share. Clients quiet for a whole window are forgotten once many are known, so memory stays bounded."""

    limit: int
    seconds: float = 60.0
    seen: dict[str, deque[float]] = field(default_factory=dict)

    def take(self, client: str) -> int:
        """Counts an event of `client` now and returns 0; over the limit, counts nothing and returns the
        seconds until the window has room."""
        now = time.monotonic()
        if len(self.seen) > MAX_CLIENTS:
            self.seen = {c: times for c, times in self.seen.items() if times and now - times[-1] < self.seconds}
        times = self.seen.setdefault(client, deque())
        while times and now - times[0] >= self.seconds:
            times.popleft()
        if len(times) >= self.limit:
            return max(1, round(self.seconds - (now - times[0])))
        times.append(now)
        return 0

    def give_back(self, client: str) -> None:
        """Uncounts the newest event of `client`."""
        if times := self.seen.get(client):
            times.pop()
