from rowembed.workers.runtime.batching import padded_tokens, plan_batches


def test_batches_are_sorted_longest_first_and_cover_every_input_once() -> None:
    lengths = [5, 300, 17, 17, 120, 2, 511, 64]
    batches = plan_batches(lengths, token_budget=1024, max_rows=64)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_padded_size_of_every_batch_fits_the_budget() -> None:
    lengths = [(i * 37) % 500 + 1 for i in range(1000)]
    budget = 4096
    for batch in plan_batches(lengths, token_budget=budget, max_rows=1000):
        assert len(batch) * max(lengths[i] for i in batch) <= budget


def test_an_input_longer_than_the_budget_gets_its_own_batch() -> None:
    assert plan_batches([600, 10, 10], token_budget=512, max_rows=8) == [[0], [1, 2]]


def test_max_rows_caps_a_batch_of_short_inputs() -> None:
    batches = plan_batches([3] * 10, token_budget=10_000, max_rows=4)
    assert [len(b) for b in batches] == [4, 4, 2]


def test_sorting_cuts_padding_against_arrival_order() -> None:
    lengths = [8, 512] * 32
    sorted_batches = plan_batches(lengths, token_budget=8192, max_rows=16)
    arrival = [list(range(i, i + 16)) for i in range(0, len(lengths), 16)]
    assert padded_tokens(lengths, sorted_batches) < padded_tokens(lengths, arrival) * 0.6


def test_empty_input_gives_no_batches() -> None:
    assert plan_batches([], token_budget=10, max_rows=1) == []
