"""Keeping Python's garbage collector off the objects a long bulk step does not create (``frozen_heap``).

Two steps hold the heap frozen (``gc.freeze``) while they run:

* normalising in forked worker processes (``normalise.in_order``): a worker shares this process's pages
  until one side writes to them, and a collection writes to the header of every object it visits, so
  each one would copy the pages the workers still share (as Python's ``gc`` documentation warns of a
  fork without exec);
* pushing (``engine/push.py``): each batch's rows live until the batch is committed, so they outlive
  the young generations and fill the oldest, whose collection then visits every object of the process
  as well: Airflow, SQLAlchemy and the rest of what a task imports, about 200,000 objects. A 900,000-row
  Meta push spent a third of its CPU in those collections (docs/performance.md).

Objects made inside the block are collected as usual; the frozen ones return to the oldest generation
when the last block of the process ends, so cyclic garbage among them is collected then, not leaked.
A heap that was frozen before the first block opened stays frozen: Airflow's LocalExecutor freezes its
heap before forking its workers, and ``gc.unfreeze`` cannot thaw only what came after.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0  # blocks of this process's threads that are open: the heap thaws after the last
_thaw = False  # whether the last block to end unfreezes (nothing was frozen before the first began)


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Freeze every object that exists now (``gc.freeze``) until the last open block of the process ends."""
    global _holders, _thaw
    with _lock:
        if _holders == 0:
            _thaw = gc.get_freeze_count() == 0
        gc.freeze()  # again in a nested block: what was made since joins the frozen objects
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _thaw:
                gc.unfreeze()
