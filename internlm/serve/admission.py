"""Admission: at most `max_concurrent` requests generate at once, at most `max_queued` wait.

A request beyond both is refused at once with 429 instead of piling up memory and latency.
A slot is held until the response has been sent or the client has gone, then handed to the
longest-waiting request.
"""

from __future__ import annotations

import asyncio

from internlm.serve.errors import APIError


class Admission:
    def __init__(self, max_concurrent: int, max_queued: int):
        self.max_concurrent, self.max_queued = max_concurrent, max_queued
        self.active = 0
        self._waiting: list[asyncio.Future] = []

    @property
    def queued(self) -> int:
        return len(self._waiting)

    async def acquire(self) -> None:
        if self.active < self.max_concurrent and not self._waiting:
            self.active += 1
            return
        if len(self._waiting) >= self.max_queued:
            raise APIError(429, f"the server is busy ({self.active} requests running, {self.queued} waiting): retry later",
                           code="rate_limit_exceeded")
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn  # release() hands its slot over: `active` is unchanged
        except asyncio.CancelledError:
            if turn in self._waiting:
                self._waiting.remove(turn)
            elif turn.done() and not turn.cancelled():
                self.release()  # the slot arrived as we were cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiting:
            turn = self._waiting.pop(0)
            if not turn.done():
                turn.set_result(None)
                return
        self.active -= 1
