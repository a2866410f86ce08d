"""Where the time of a batch goes, stage by stage (`bench/gpu_e2e.py --stages`).

Each stage's seconds are summed across threads (the pipeline's claiming,
model and writing threads overlap, so the sum of the stages may exceed the
wall time: a stage's share of the wall time says how much of it the others
could hide). With `sync`, a stage ends only when the device has finished its
work (torch.cuda.synchronize), so device time is charged to the stage that
queued it; that serializes host and device, so it is for attribution runs only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# In the order a row meets them.
STAGES = (
    "claim",
    "read",
    "tokenize",
    "build inputs",
    "host to device",
    "model",
    "pool and copy back",
    "write",
)


class StageClock:
    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.sync = sync
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in self.seconds:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        if self.sync is not None:
            self.sync()
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            elapsed = time.perf_counter() - started
            with self._lock:
                self.seconds[name] += elapsed

    def table(self, rows: int, wall_seconds: float) -> list[tuple[str, float, float]]:
        """(stage, microseconds per row, share of the wall time) per stage."""
        return [
            (name, 1e6 * s / rows if rows else 0.0, s / wall_seconds if wall_seconds else 0.0)
            for name, s in self.seconds.items()
        ]


@contextmanager
def timed(clock: StageClock | None, name: str) -> Iterator[None]:
    """`clock.stage(name)`, or nothing when there is no clock."""
    if clock is None:
        yield
    else:
        with clock.stage(name):
            yield
