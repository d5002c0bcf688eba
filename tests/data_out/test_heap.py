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


def test_a_heap_frozen_before_the_first_block_stays_frozen_after_the_last():
    """Airflow's LocalExecutor freezes its heap before forking workers; a push in their tasks leaves it so."""
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        with frozen_heap():
            pass
        assert gc.get_freeze_count() >= before > 0
    finally:
        gc.unfreeze()
    with frozen_heap():  # and a later block, with nothing frozen before it, thaws as usual
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
