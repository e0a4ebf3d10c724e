"""Admission control: at most `max_concurrent` requests generate, at most `max_queue` wait, the rest get 429."""
from __future__ import annotations

import asyncio

from armor_serve.api_errors import ApiError


class Admission:
    def __init__(self, max_concurrent: int, max_queue: int, retry_after_s: int):
        self.slots = asyncio.Semaphore(max_concurrent)
        self.max_queue, self.waiting, self.running, self.retry_after_s = max_queue, 0, 0, retry_after_s

    def full(self) -> bool:
        return self.slots.locked() and self.waiting >= self.max_queue

    def busy_error(self) -> ApiError:
        return ApiError(429, f"server busy: {self.running} requests running and {self.waiting} queued; retry later",
                        "rate_limit_error", code="server_busy", headers={"Retry-After": str(self.retry_after_s)})

    async def __aenter__(self):
        if self.full():
            raise self.busy_error()
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        return self

    async def __aexit__(self, *exc):
        self.running -= 1
        self.slots.release()
