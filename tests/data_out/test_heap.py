"""``heap.frozen_heap``: blocks of several threads share one frozen heap, which thaws after the last."""

from __future__ import annotations

import gc

from data_out.heap import frozen_heap


def test_nested_blocks_freeze_what_was_made_since_and_the_heap_thaws_after_the_last():
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        outer = gc.get_freeze_count()
        assert outer > 0
        made = [[i] for i in range(5_000)]  # tracked containers made inside the outer block
        with frozen_heap():
            assert gc.get_freeze_count() >= outer + len(made)  # the inner block froze them too
        assert gc.get_freeze_count() > 0  # the outer block is still open
    assert gc.get_freeze_count() == 0
