"""The worker's scheduling policy, in one place: how many rows a claim takes,
when a task hands back to another table, and how urgent hints are.

Which queue entries are claimable, and in what order, is the queue's rule
(rowembed.pgplugin.queue); this module decides how much to take and when to stop.
"""

from __future__ import annotations

from typing import Any

import psycopg

from rowembed.pgplugin.queue import vectorizers_with_work
from rowembed.settings import Settings

from .celery_app import hint_priorities, waiting_messages
from .pipeline import UNMEASURED_CHARACTERS
from .queues import EMBED_QUEUE

# Queue entries claimed per batch. The claim is the window sorted by length:
# larger claims pad less (CPU: +7.7% padded tokens at 256 rows, +4.2% at 512)
# and a GPU needs thousands of rows to fill its 64k-token passes; smaller ones
# hand back sooner to another table's live changes.
DEFAULT_CLAIM_ROWS = {"cpu": 512, "cuda": 4096}

# A dispatcher holds a background hint back while this many hints wait in the
# broker (ROWEMBED_MAX_PENDING_HINTS); an urgent one only while this many times more do.
URGENT_HINT_ALLOWANCE = 8


def claim_rows(settings: Settings) -> int:
    if settings.batch_rows:
        return settings.batch_rows
    from .runtime.forward import pick_device

    return DEFAULT_CLAIM_ROWS[pick_device(settings.device).type]


def hint_priority(app: Any, urgent: bool) -> int:
    """Hints of live changes overtake backfill hints waiting in the broker."""
    urgent_priority, background_priority = hint_priorities(app)
    return urgent_priority if urgent else background_priority


def may_send_hint(app: Any, queue: str, max_pending: int, urgent: bool) -> bool:
    """Hints piling up in the broker are held back; backfill hints never keep a
    live change's hint waiting for the sweep."""
    limit = max_pending * (URGENT_HINT_ALLOWANCE if urgent else 1)
    return waiting_messages(app, queue) < limit


def should_hand_back(app: Any, conn: psycopg.Connection[Any], vectorizer_id: int) -> bool:
    """Hints wait in the broker, and another table has live changes a worker may
    claim. Hints for this same table (the sweep sends them while its backlog
    lasts) are no reason to stop, nor is another table's backfill: each would
    cost a hand-back per batch (another table's backlog gets its turn when this
    task's time budget is spent)."""
    if waiting_messages(app, EMBED_QUEUE) == 0:
        return False
    return any(vid != vectorizer_id and changes for vid, changes in vectorizers_with_work(conn))


def follow_up_is_urgent(conn: psycopg.Connection[Any], vectorizer_id: int) -> bool:
    """Whether what a task leaves behind includes live changes (then its
    follow-up hint is urgent too)."""
    return any(vid == vectorizer_id and changes for vid, changes in vectorizers_with_work(conn))


class ClaimSize:
    """What a claim may hold: `rows` (at most `ceiling`: ROWEMBED_BATCH_ROWS or
    the device's default) and `characters` of text to embed, both from this
    process's measured rate, so that a batch takes about `target_seconds`
    whatever its rows' lengths (a slow or busy machine, long rows, chunked ones)
    and never meets the task's time limits; they grow back as batches get
    faster. One per worker process."""

    FLOOR = 8

    def __init__(self, ceiling: int, target_seconds: float) -> None:
        self.ceiling = ceiling
        self.target_seconds = target_seconds
        self.rows = ceiling
        self.characters = UNMEASURED_CHARACTERS  # until measured

    def observe(self, rows: int, seconds: float, characters: int = 0) -> None:
        """A drain claimed `rows` and embedded `characters` of text in `seconds`."""
        if rows > 0 and seconds > 0:
            fitting = int(rows / seconds * self.target_seconds)
            self.rows = max(self.FLOOR, min(self.ceiling, fitting))
        if characters > 0 and seconds > 0:
            self.characters = max(1, int(characters / seconds * self.target_seconds))

    def timed_out(self) -> None:
        """A batch met the soft time limit: claim one row next, so that a row
        that outlasts the limit meets it alone (and is counted, then parked)
        while those claimed beside it go on; observe() grows claims back from
        the rate of those."""
        self.rows = 1
