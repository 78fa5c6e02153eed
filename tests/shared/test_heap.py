"""The startup objects of a process are frozen once, out of the garbage collector's way."""

import gc

import pytest

from shared import heap


def test_objects_alive_at_startup_are_frozen_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_done", False)
    gc.unfreeze()
    assert gc.get_freeze_count() == 0

    heap.freeze_startup_objects()
    frozen = gc.get_freeze_count()
    made_later = [[] for _ in range(1000)]
    heap.freeze_startup_objects()  # a second app in the same process: nothing more is frozen

    assert frozen > 10_000  # the modules, classes and functions loaded so far
    assert gc.get_freeze_count() == frozen  # the 1,000 lists made since, alive here, were not frozen
    del made_later
