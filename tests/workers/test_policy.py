"""The worker's policy: claim sizes that keep a batch far from the time limits."""

from __future__ import annotations

from rowembed.workers.pipeline import UNMEASURED_CHARACTERS
from rowembed.workers.policy import ClaimSize
from rowembed.workers.progress import slices


def test_claims_shrink_to_fit_the_time_a_batch_may_take_and_grow_back() -> None:
    size = ClaimSize(ceiling=512, target_seconds=20)
    assert size.rows == 512
    size.observe(rows=512, seconds=60)  # a busy machine: 8.5 rows/s
    assert size.rows == 170
    size.observe(rows=170, seconds=1)  # fast again
    assert size.rows == 512


def test_a_timed_out_batch_claims_one_row_next_then_grows_back() -> None:
    size = ClaimSize(ceiling=512, target_seconds=20)
    size.timed_out()
    assert size.rows == 1
    size.observe(rows=0, seconds=0)  # nothing claimed: nothing learned
    assert size.rows == 1
    size.observe(rows=1, seconds=0.05)  # an ordinary row: 20 rows/s
    assert size.rows == 400


def test_a_claims_text_fits_the_time_a_batch_may_take() -> None:
    size = ClaimSize(ceiling=512, target_seconds=20)
    assert size.characters == UNMEASURED_CHARACTERS  # not measured yet: a cautious start
    size.observe(rows=0, seconds=10, characters=50_000)  # 5,000 characters a second
    assert size.characters == 100_000


def test_a_long_rows_chunks_are_cut_into_slices_of_a_batchs_work() -> None:
    assert slices([40, 40, 40, 40, 40], budget=100) == [range(0, 2), range(2, 4), range(4, 5)]
    assert slices([300, 10, 10], budget=100) == [range(0, 1), range(1, 3)]  # one at least
    assert slices([10, 10], budget=100) == [range(0, 2)]
    assert slices([], budget=100) == []
