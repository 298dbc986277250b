"""The Redis serving tier's writer: served entries (transforms/rules/served.py) put with a version
check, one pipelined round trip per batch. Used by the Firestore writer after each commit and by
the erasure job (pipeline/erase.py)."""
from __future__ import annotations

import logging
import typing

from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry

from transforms.rules import served
from transforms.settings import RedisTier

_log = logging.getLogger(__name__)


class RedisUnavailable(RuntimeError):
  """Redis kept failing for the whole retry budget. Raised from the Firestore writer it fails the
  bundle, whose retry re-reads Firestore and puts every entry again: an entry older than its
  document is never left behind silently."""


def _transient():
  import redis
  # Connection refused or reset, timeouts, a replica that is loading or read-only after a
  # failover: all worth another try. A script or protocol error is not.
  return (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
          redis.ReadOnlyError)


class RedisWriter:
  """Puts served entries into the Redis of `tier`; retries transient errors with exponential
  backoff and jitter (google.api_core's Retry, as the Firestore writer does) for at most
  `tier.retry_seconds`, then raises RedisUnavailable. `on_retry` is called per retried error."""

  def __init__(self, tier: RedisTier, on_retry: typing.Callable[[Exception], None] | None = None,
               timeout: float = 5.0):
    self._tier = tier
    self._timeout = timeout
    self._on_retry = on_retry
    self._client = None
    self._script = None

  def _connect(self):
    if self._client is None:
      import redis
      self._client = redis.Redis.from_url(self._tier.url, socket_timeout=self._timeout,
                                          socket_connect_timeout=self._timeout)
      self._script = self._client.register_script(served.SET_IF_NEWER)
    return self._client

  def _retrying(self, call, what: str):
    def on_error(err):
      if self._on_retry is not None:
        self._on_retry(err)
      _log.warning('Redis %s failed (%s: %s); retrying with backoff for up to %.0f s', what,
                   type(err).__name__, str(err)[:200], self._tier.retry_seconds)
    retry = api_retry.Retry(predicate=api_retry.if_exception_type(*_transient()),
                            initial=0.2, maximum=5.0, multiplier=2.0,
                            timeout=self._tier.retry_seconds, on_error=on_error)
    try:
      return retry(call)()
    except (*_transient(), api_exceptions.RetryError) as err:  # RetryError: the budget ran out
      raise RedisUnavailable(
          f'Redis ({what}, prefix {self._tier.prefix!r}) kept failing for '
          f'{self._tier.retry_seconds:.0f} s of retries: {type(err).__name__}: '
          f'{str(err)[:300]}') from err

  def put(self, entries: typing.Mapping[str, served.Entry]) -> tuple[int, int]:
    """Puts each customer's entry unless Redis holds a newer (or the same) version; returns
    (entries written, entries not newer than what Redis holds)."""
    if not entries:
      return 0, 0
    items = list(entries.items())

    def call():
      client = self._connect()
      pipe = client.pipeline(transaction=False)
      for customer_id, entry in items:
        self._script(keys=[served.key(self._tier.prefix, customer_id)],
                     args=entry.redis_args(), client=pipe)
      return pipe.execute()
    results = self._retrying(call, f'put of {len(items)} entries')
    written = sum(1 for result in results if result == 1)
    return written, len(items) - written

  def present(self, customer_ids: typing.Iterable[str]) -> set[str]:
    """The customers of `customer_ids` that have an entry (or a tombstone)."""
    ids = list(customer_ids)
    if not ids:
      return set()

    def call():
      pipe = self._connect().pipeline(transaction=False)
      for customer_id in ids:
        pipe.exists(served.key(self._tier.prefix, customer_id))
      return pipe.execute()
    return {i for i, found in zip(ids, self._retrying(call, f'exists of {len(ids)}')) if found}

  def delete(self, customer_ids: typing.Iterable[str]) -> int:
    """Removes the customers' entries, tombstones included (erasure: nothing of them is kept);
    returns how many keys existed."""
    keys = [served.key(self._tier.prefix, customer_id) for customer_id in customer_ids]
    if not keys:
      return 0
    return int(self._retrying(lambda: self._connect().delete(*keys), f'delete of {len(keys)}'))

  def close(self) -> None:
    if self._client is not None:
      self._client.close()
      self._client = None
