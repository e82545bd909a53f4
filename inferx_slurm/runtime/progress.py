"""Whether a running benchmark point is making progress, judged from the frontend's counters.

Pure: the caller scrapes the counters and passes the time, so the judgement is tested on
exact sequences of readings rather than on a machine's timing."""

from __future__ import annotations

import enum
from typing import NamedTuple, Optional


class Counters(NamedTuple):
    """Frontend totals at one reading."""

    started: float  # requests the frontend has accepted
    tokens: float  # tokens it has produced
    done: float  # requests it has answered in full


class Verdict(str, enum.Enum):
    client_silent = "client_silent"  # the client has not sent its first request in time
    stalled = "stalled"  # requests are open and nothing has moved for the stall bound


class ProgressClock:
    """Any movement of any counter is progress: a request accepted, a token produced or an
    answer completed. Counting only tokens would read the first request's own prefill (accepted,
    no token yet) as a stall whenever the client's start-up outlasted the stall bound."""

    def __init__(self, *, startup_s: float, stall_s: float, expected: int, t0: float):
        self.startup_s, self.stall_s, self.expected, self.t0 = startup_s, stall_s, expected, t0
        self.base: Optional[Counters] = None
        self.last: Optional[Counters] = None
        self.last_change = t0

    def observe(self, now: Counters, t: float) -> Optional[Verdict]:
        self.base = self.base or now
        if now != self.last:
            self.last, self.last_change = now, t
        if now.started == self.base.started and now.tokens == self.base.tokens:
            # The client is still starting (tokenizer, dataset): its own, longer bound.
            return Verdict.client_silent if t - self.t0 > self.startup_s else None
        if now.done - self.base.done >= self.expected:
            return None  # every request is answered; the client is writing its exports
        return Verdict.stalled if t - self.last_change > self.stall_s else None
