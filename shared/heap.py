"""Keeps Python's garbage collector off the long-lived objects of a server process.

A process of this service holds some 120,000 objects made at start (modules, classes, pydantic and SQLAlchemy
machinery) that live until it ends. Every full (generation 2) collection walks all of them: about 100 ms on this
project's benchmark machine, during which no request is served — the worst of the API's latency tail.
`freeze_startup_objects` collects once, then moves every object alive at that moment to the permanent
generation (`gc.freeze`), so later collections only walk objects made while serving. Once per process: what
a process makes later (a test suite starting many apps, say) stays collectable.
"""

import gc

_done = False


def freeze_startup_objects() -> None:
    """Collect garbage once, then exempt every object alive now from future collections (first call only)."""
    global _done
    if _done:
        return
    _done = True
    gc.collect()
    gc.freeze()
