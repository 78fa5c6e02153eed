"""Keeps Python's garbage collector off the long-lived objects of a server process.

`freeze_startup_objects` collects once, then moves every object alive at that moment to the permanent generation
(`gc.freeze`), so that later full collections walk only objects made while serving (once per process).
`collector_paused` keeps the collector out of the drain's batches, whose many short-lived objects hold no cycles.
What it saves is measured in loadtest/RESULTS.md.
"""

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_done = False


def freeze_startup_objects() -> None:
    """Collect garbage once, then exempt every object alive now from future collections (first call only)."""
    global _done
    if _done:
        return
    _done = True
    gc.collect()
    gc.freeze()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Keep the cyclic garbage collector from running inside the block (it runs again afterwards).

    For the drain's batches: decoding 50,000 notifications makes some 600,000 dicts and strings in a burst,
    and each burst set off collections that walked all of them again and again, although decoded JSON holds no
    reference cycles (it is freed by reference counting as soon as the batch is done). With the collector paused
    the drain spent ~6 µs of CPU per notification instead of ~10 (`loadtest/bench_drain.py`'s backlog, six runs).
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
