"""Keeps a host's warm pool at its size: one slot started at a time, at low priority, so
that refilling never competes with the notebooks starting beside it more than one editor's
start does; and woken at once when a claim took a slot."""

from __future__ import annotations

import asyncio
import logging

from activities.runtime.warm_pool import Slot, WarmPool

log = logging.getLogger("ainb.pool")

IDLE_CHECK_S = 5.0
READY_TICK_S = 0.1
READY_TIMEOUT_S = 120.0


class PoolKeeper:
    def __init__(self, pool: WarmPool) -> None:
        self.pool = pool
        self._wake = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()

        def wake() -> None:
            loop.call_soon_threadsafe(self._wake.set)

        self.pool.on_claim = wake
        log.info("warm pool: %s", ", ".join(f"{n} x {i}" for i, n in self.pool.sizes.items()))
        while True:
            self._wake.clear()
            try:
                await loop.run_in_executor(None, self.pool.tidy)
                # Slots adopted from an agent that stopped without draining them.
                for slot in [s for s in self.pool.slots() if not s.ready]:
                    await loop.run_in_executor(None, self.pool.probe, slot)
                image = self.pool.wanted()
                if image is not None:
                    slot = await loop.run_in_executor(None, self.pool.start_slot, image)
                    await self._until_ready(slot)
                    continue
            except Exception:
                log.exception("warm pool step failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE_CHECK_S)
            except TimeoutError:
                pass

    async def _until_ready(self, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        next_tidy = loop.time() + 2.0
        while loop.time() < deadline:
            if slot.name not in {s.name for s in self.pool.slots()}:
                return  # tidied away: its editor died
            if await loop.run_in_executor(None, self.pool.probe, slot):
                log.info("warm slot %s of %s is ready", slot.name, slot.image)
                return
            await asyncio.sleep(READY_TICK_S)
            if loop.time() >= next_tidy:  # an editor that exited while starting
                next_tidy = loop.time() + 2.0
                await loop.run_in_executor(None, self.pool.tidy)
        log.warning("warm slot %s did not become ready: dropped", slot.name)
        await loop.run_in_executor(None, self.pool.drop, slot)

    def drain(self) -> None:
        self.pool.drain()
