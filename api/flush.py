"""The group commit's one Redis script, `FLUSH`: what it does, its arguments, their packing and its reply.

One script call applies a batch of writes to one shard atomically (as MULTI/EXEC would). Per write: a SET of its
JSON under its cache key and an XADD of a stream entry naming that key (with the request id, and the entry's size
so that the drain fetches a batch in parts of bounded size); for a write with an Idempotency-Key, the record kept
with it, unless a record exists under that key already: then nothing of the write is kept or queued and the record
found is returned; for a write of a rate-limited service, its cost taken from the service's token bucket (refilled
by Redis's clock), or, when there are too few tokens, nothing of it kept, queued or recorded. The reply also gives
the stream's length, for backpressure. A write with an empty entry is a charge only (a job's rows, stored by the
job's own path): its tokens are taken, nothing is kept or queued. `pack` writes the arguments, `parse` reads the
reply: the layout is theirs.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared import keys

__all__ = ["FLUSH", "Idempotency", "RateLimit", "RateState", "Write", "Written", "pack", "parse", "reply_code"]


@dataclass(slots=True)
class Idempotency:
    """What the flush records for a write that carries an Idempotency-Key, atomically with the write."""

    #: The record's Redis key (`keys.Shard.idempotency_key`).
    key: str
    #: The record: the request's fingerprint followed by what rebuilds its answer (`api.idempotency.record`).
    record: bytes
    ttl_seconds: int


@dataclass(slots=True)
class RateLimit:
    """A write's place in its service's token bucket: the flush takes `cost` tokens or refuses the write."""

    #: The bucket's Redis key (`keys.Shard.bucket_key`).
    bucket_key: str
    #: Notifications per minute: the bucket's capacity.
    per_minute: int
    #: Notifications in the request.
    cost: int
    #: Tokens the bucket gains per minute: the limit, shared out over the shards (each has a bucket of its own).
    refill_per_minute: float


@dataclass(slots=True, frozen=True)
class RateState:
    """The bucket as a rate-limited write left it."""

    allowed: bool
    limit: int
    #: Thousandths of tokens left (rounded down).
    milli_tokens: int
    #: If allowed, milliseconds until the bucket is full again; if not, until it holds the request's cost.
    wait_ms: int
    #: Tokens the bucket gains per minute.
    refill_per_minute: float

    @property
    def remaining(self) -> int:
        """Whole tokens left."""
        return self.milli_tokens // 1000


@dataclass(slots=True)
class Write:
    """One request's write, as a flush carries it."""

    #: The request's JSON array, kept under `cache_key`.
    entry: bytes
    cache_key: str
    #: Stored with the stream entry, for the worker's logs.
    request_id: str
    idempotency: Idempotency | None
    rate_limit: RateLimit | None


@dataclass(slots=True, frozen=True)
class Written:
    """How a write went: queued (`record` None), or answered from the record a write with its key left first.

    A refused rate-limited write has `rate.allowed` False and was not queued.
    """

    record: bytes | None = None
    rate: RateState | None = None

    @property
    def queued(self) -> bool:
        """True when the flush kept and queued the write."""
        return self.record is None and (self.rate is None or self.rate.allowed)


_QUEUED = Written()


def pack(stream: str, batch: Sequence[Write]) -> tuple[list[str], list[bytes | str]]:
    """Return the script's KEYS and ARGV for `batch`, a shard's writes, and `stream`, the shard's stream.

    KEYS: the stream, then one cache key per write, then one idempotency record key per write that carries an
    Idempotency-Key, then one token bucket per rate-limited service of the batch.
    ARGV: first the counts "<writes> <records> <buckets>"; then each write's entry and request id, in turn; then per
    record one argument, "<write's position, 1-based> <TTL seconds> <record>" (one argument rather than three:
    redis-py packs each argument apart, and per argument that costs about as much as the rest of the record's work);
    then per rate-limited write "<position> <bucket, 1-based> <capacity> <refill per minute> <cost>".
    """
    keys_: list[str] = [stream]
    args: list[bytes | str] = [""]
    records: list[bytes] = []
    limits: list[str] = []
    buckets: dict[str, int] = {}
    for position, item in enumerate(batch, 1):
        keys_.append(item.cache_key)
        args += (item.entry, item.request_id)
        if item.idempotency is not None:
            idempotency = item.idempotency
            records.append(b"%d %d %b" % (position, idempotency.ttl_seconds, idempotency.record))
        if item.rate_limit is not None:
            limit = item.rate_limit
            bucket = buckets.setdefault(limit.bucket_key, len(buckets) + 1)
            limits.append(f"{position} {bucket} {limit.per_minute} {limit.refill_per_minute} {limit.cost}")
    if records:
        keys_ += [item.idempotency.key for item in batch if item.idempotency is not None]
        args += records
    keys_ += buckets
    args += limits
    args[0] = f"{len(batch)} {len(records)} {len(buckets)}"
    return keys_, args


def parse(batch: Sequence[Write], reply: list[Any]) -> tuple[int, list[Written]]:
    """Return the stream's length and how each write of `batch` went, from the script's reply to `pack(batch)`.

    The reply: the stream's length, the number of records found, the (position, record) pairs, then per
    rate-limited write (position, 1 if allowed else 0, thousandths of tokens left, milliseconds until the bucket is
    full if allowed, or until it holds `cost` tokens if not).
    """
    if len(reply) == 2:  # every write queued: no record found, none rate-limited
        return reply[0], [_QUEUED] * len(batch)
    after_records = 2 + 2 * reply[1]
    found = {reply[n]: reply[n + 1] for n in range(2, after_records, 2)}
    rates = {reply[n]: (reply[n + 1] == 1, reply[n + 2], reply[n + 3]) for n in range(after_records, len(reply), 4)}
    outcomes: list[Written] = []
    for position, item in enumerate(batch, 1):
        record, rate = found.get(position), rates.get(position)
        if rate is None:
            outcomes.append(_QUEUED if record is None else Written(record))
        else:
            assert item.rate_limit is not None
            allowed, milli_tokens, wait_ms = rate
            limit = item.rate_limit
            outcomes.append(
                Written(record, RateState(allowed, limit.per_minute, milli_tokens, wait_ms, limit.refill_per_minute))
            )
    return reply[0], outcomes


# The script: `pack`'s arguments in, `parse`'s reply out.
FLUSH = f"""
local key_field, request_id_field = '{keys.STREAM_KEY_FIELD.decode()}', '{keys.REQUEST_ID_FIELD.decode()}'
local size_field = '{keys.STREAM_SIZE_FIELD.decode()}'
local counts = {{}}
for count in string.gmatch(ARGV[1], '%d+') do counts[#counts + 1] = tonumber(count) end
local n, records, buckets = counts[1], counts[2], counts[3]
local record_of = {{}}
for j = 1, records do
  local head = ARGV[1 + 2 * n + j]
  record_of[tonumber(string.sub(head, 1, string.find(head, ' ', 1, true) - 1))] = j
end
local limit_of = {{}}
for a = 2 + 2 * n + records, #ARGV do
  local item = {{}}
  for number in string.gmatch(ARGV[a], '[%d.]+') do item[#item + 1] = tonumber(number) end
  limit_of[item[1]] = item
end
local now, bucket_of = 0, {{}}
if buckets > 0 then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local replayed, rates = {{}}, {{}}
for i = 1, n do
  local j = record_of[i]
  local found = false
  if j then
    found = redis.call('GET', KEYS[1 + n + j])
    if found then
      replayed[#replayed + 1] = i
      replayed[#replayed + 1] = found
    end
  end
  local allowed = true
  local limited = limit_of[i]
  if limited then
    local b, limit, refill, cost = limited[2], limited[3], limited[4], limited[5]
    local bucket = bucket_of[b]
    if not bucket then
      local tokens, at = limit, now
      local stored = redis.call('GET', KEYS[1 + n + records + b])
      if stored then
        local space = string.find(stored, ' ', 1, true)
        tokens, at = tonumber(string.sub(stored, 1, space - 1)), tonumber(string.sub(stored, space + 1))
      end
      tokens = math.min(limit, tokens + math.max(0, now - at) * refill / 60000)
      bucket = {{tokens = tokens, limit = limit, refill = refill}}
      bucket_of[b] = bucket
    end
    local wait
    if not found and bucket.tokens < cost then
      allowed = false
      wait = (cost - bucket.tokens) * 60000 / refill
    else
      if not found then bucket.tokens = bucket.tokens - cost end
      wait = (limit - bucket.tokens) * 60000 / refill
    end
    rates[#rates + 1] = i
    rates[#rates + 1] = allowed and 1 or 0
    rates[#rates + 1] = math.floor(bucket.tokens * 1000)
    rates[#rates + 1] = math.ceil(wait)
  end
  if not found and allowed and #ARGV[2 * i] > 0 then  -- an empty entry only takes tokens (a job's charge)
    local entry = ARGV[2 * i]
    redis.call('SET', KEYS[i + 1], entry)
    redis.call('XADD', KEYS[1], '*', key_field, KEYS[i + 1], request_id_field, ARGV[2 * i + 1], size_field, #entry)
    if j then
      local head = ARGV[1 + 2 * n + j]
      local ttl_at = string.find(head, ' ', 1, true) + 1
      local record_at = string.find(head, ' ', ttl_at, true) + 1
      redis.call('SET', KEYS[1 + n + j], string.sub(head, record_at), 'EX', string.sub(head, ttl_at, record_at - 2))
    end
  end
end
for b, bucket in pairs(bucket_of) do
  local empty_for = math.ceil((bucket.limit - bucket.tokens) * 60000 / bucket.refill)
  if empty_for > 0 then  -- a missing bucket is a full one
    redis.call('SET', KEYS[1 + n + records + b], string.format('%.6f %d', bucket.tokens, now), 'PX', empty_for)
  else
    redis.call('DEL', KEYS[1 + n + records + b])
  end
end
local reply = {{redis.call('XLEN', KEYS[1]), #replayed / 2}}
for _, value in ipairs(replayed) do reply[#reply + 1] = value end
for _, value in ipairs(rates) do reply[#reply + 1] = value end
return reply
"""


#: Redis before 7 wraps the error reply of a command that a script called in its own message:
#: `Error running script (call to f_...): @user_script:3: @user_script: 3: -OOM command not allowed ...`.
_SCRIPT_ERROR = re.compile(r"Error running script .*?: -(?P<reply>[A-Z]+ .*)", re.DOTALL)
#: redis-py's wording for an error reply to a command of a pipeline (the flush and its WAIT).
_PIPELINE_ERROR = re.compile(r"Command # \d+ \(.*\) of pipeline caused error: \('(?P<reply>[A-Z]+.*)", re.DOTALL)


def reply_code(exc: Exception) -> str:
    """The error code of a Redis reply (`OOM`, `MISCONF`…), also when wrapped in a script or a pipeline error."""
    message = str(exc)
    found = _SCRIPT_ERROR.match(message) or _PIPELINE_ERROR.match(message)
    return (found["reply"] if found else message).split(" ", 1)[0]
