"""Admission control: at most `max_concurrent` requests generate, at most `max_queue` wait, the rest get 429.

A request takes its place in the queue the moment it is admitted (`ticket()`, synchronous): a stream is
admitted before its 200 and event stream start, and waits for its slot inside the stream; counting it only
once the stream runs would let a burst of streams all pass the check before any of them is counted.
"""
from __future__ import annotations

import asyncio

from armor_serve.api_errors import ApiError


class Admission:
    def __init__(self, max_concurrent: int, max_queue: int, retry_after_s: int):
        self.slots = asyncio.Semaphore(max_concurrent)
        self.places = max_concurrent + max_queue  # running + waiting never exceeds this
        self.waiting, self.running, self.retry_after_s = 0, 0, retry_after_s

    def busy_error(self) -> ApiError:
        return ApiError(429, f"server busy: {self.running} requests running and {self.waiting} queued; retry later",
                        "rate_limit_error", code="server_busy", headers={"Retry-After": str(self.retry_after_s)})

    def ticket(self) -> "Ticket":
        """A place in the queue now, or 429 when the slots are taken and the queue is full."""
        # every ticket counts, including one admitted a moment ago whose stream has not yet taken its slot
        if self.running + self.waiting >= self.places:
            raise self.busy_error()
        return Ticket(self)


class Ticket:
    """`async with ticket:` waits for a generation slot and gives it back. `release()` may also be called on its
    own (a stream whose body never ran) and more than once."""

    def __init__(self, admission: Admission):
        self.admission, self.state = admission, "waiting"
        admission.waiting += 1

    async def __aenter__(self):
        await self.admission.slots.acquire()
        self.admission.waiting -= 1
        self.admission.running += 1
        self.state = "running"
        return self

    async def __aexit__(self, *exc):
        self.release()

    def release(self) -> None:
        if self.state == "waiting":
            self.admission.waiting -= 1
        elif self.state == "running":
            self.admission.running -= 1
            self.admission.slots.release()
        self.state = "done"
