"""The Redis serving tier, read side: served entries (transforms/rules/served.py) that the
pipeline's Firestore writer puts after each commit, read before Firestore, behind a circuit
breaker so a Redis that is down costs one timeout now and then, not one per request."""
from __future__ import annotations

import asyncio
import time
from typing import Callable, Iterable

from transforms.rules import served

_FIELDS = ('v', 'body', 'etag', 'last_event_at', 'deleted')


class RedisFailed(Exception):
  """Redis did not answer in time, or failed: the lookup falls back to Firestore."""


class Breaker:
  """Consecutive-failure circuit breaker. Closed: every call goes through. After `failures`
  failures in a row it opens for `open_seconds` (calls are skipped); then one trial call goes
  through (half-open): success closes it, failure opens it again. Hand-written (a dozen lines)
  because the Python breaker libraries are synchronous or wrap the call itself, while here the
  caller decides what skipping means (read Firestore instead)."""

  def __init__(self, failures: int = 5, open_seconds: float = 5.0,
               clock: Callable[[], float] = time.monotonic):
    self._threshold = failures
    self._open_seconds = open_seconds
    self._clock = clock
    self._failures = 0
    self._opened_at: float | None = None
    self._trial = False

  @property
  def is_open(self) -> bool:
    return self._opened_at is not None

  def allow(self) -> bool:
    """Whether the next call may go to Redis."""
    if self._opened_at is None:
      return True
    if self._trial or self._clock() - self._opened_at < self._open_seconds:
      return False
    self._trial = True  # half-open: this caller is the one trial
    return True

  def success(self) -> None:
    self._failures, self._opened_at, self._trial = 0, None, False

  def failure(self) -> None:
    self._failures += 1
    self._trial = False
    if self._opened_at is not None or self._failures >= self._threshold:
      self._opened_at = self._clock()


class RedisEntries:
  """Served entries by customer id from the Redis at `url` (redis-py's asyncio client, a
  bounded pool), each lookup one pipelined round trip bounded by `timeout` seconds."""

  def __init__(self, url: str, prefix: str = served.DEFAULT_PREFIX, timeout: float = 0.1,
               max_connections: int = 64):
    self._url = url
    self._prefix = prefix
    self._timeout = timeout
    self._max_connections = max_connections
    self._client = None

  def _redis(self):
    if self._client is None:
      import redis.asyncio as redis
      pool = redis.BlockingConnectionPool.from_url(
          self._url, max_connections=self._max_connections, timeout=self._timeout,
          socket_timeout=self._timeout, socket_connect_timeout=self._timeout)
      self._client = redis.Redis(connection_pool=pool)
    return self._client

  async def get_many(self, ids: Iterable[str]) -> dict[str, served.Entry | None]:
    """Each id's entry (a tombstone for a deleted document), or None when Redis has none;
    RedisFailed when Redis failed or took longer than the timeout."""
    ids = list(ids)
    try:
      # asyncio.timeout rather than wait_for: no task per lookup (this is the hot path).
      async with asyncio.timeout(self._timeout):
        answers = await self._fetch(ids)
    except Exception as err:  # any failure or timeout: the caller reads Firestore instead
      raise RedisFailed(f'{type(err).__name__}: {str(err)[:200]}') from err
    return {customer_id: served.parse(dict(zip((f.encode() for f in _FIELDS), values)))
            for customer_id, values in zip(ids, answers)}

  async def _fetch(self, ids: list[str]):
    if len(ids) == 1:  # a send-time lookup: one command, no pipeline object
      return [await self._redis().hmget(served.key(self._prefix, ids[0]), *_FIELDS)]
    pipe = self._redis().pipeline(transaction=False)
    for customer_id in ids:
      pipe.hmget(served.key(self._prefix, customer_id), *_FIELDS)
    return await pipe.execute()

  async def ping(self) -> None:
    await asyncio.wait_for(self._redis().ping(), self._timeout * 10)

  async def close(self) -> None:
    if self._client is not None:
      await self._client.aclose()
      self._client = None
