import time

from api.cache import TtlCache


def test_an_outcome_is_known_until_it_expires_and_stays_readable_as_stale() -> None:
    cache = TtlCache[str, int](60)
    cache.put("fresh", 1)
    cache.put("tied", 2, expires_at=time.monotonic() - 1)  # derived from an outcome that has expired already

    assert cache.get("fresh") == (True, 1)
    assert cache.get("tied") == (False, None)
    assert cache.stale("tied") == 2
    assert cache.get("never put") == (False, None)


def test_expires_at_never_extends_the_ttl() -> None:
    cache = TtlCache[str, int](60)
    before = time.monotonic()
    cache.put("key", 1, expires_at=before + 3600)

    expiry = cache.expiry("key")
    assert expiry is not None
    assert expiry <= time.monotonic() + 60


def test_a_ttl_of_zero_remembers_nothing() -> None:
    cache = TtlCache[str, int](0)
    cache.put("key", 1)

    assert (len(cache), cache.get("key"), cache.expiry("key")) == (0, (False, None), None)


def test_the_oldest_put_is_evicted_past_the_bound_and_forget_drops_one() -> None:
    cache = TtlCache[int, int](60, max_entries=3)
    for key in range(4):
        cache.put(key, key)
    cache.put(1, 10)  # put again: now the newest
    cache.put(4, 4)

    assert [cache.get(key)[0] for key in range(5)] == [False, True, False, True, True]
    cache.forget(3)
    assert cache.get(3) == (False, None)
