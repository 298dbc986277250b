"""Reading serving documents from Firestore, behind an in-process TTL cache."""
from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any, Iterable

from connector import shaping


class StoreUnavailable(Exception):
  """Firestore did not answer in time, or failed: the request gets a 503."""


class DocumentStore:
  """Firestore `collection` documents by id (google-cloud-firestore's async client; it honours
  FIRESTORE_EMULATOR_HOST), created on first use.

  Lookups are micro-batched: ids asked for within `window` seconds share one `get_all` of up to
  100 documents, concurrent requests for the same id share one fetch, at most `max_calls` fetches
  run at once, and each has a `timeout`. One `get_all` per request cost more CPU per document
  than a batched one, and hundreds of concurrent single-document calls stalled the server;
  batching bounds both (docs/PERFORMANCE.md, "ESP connector").
  """

  def __init__(self, project: str, database: str, collection: str, window: float = 0.002,
               timeout: float = 2.0, max_calls: int = 8):
    self._project = project
    self._database = database
    self._collection = collection
    self._window = window
    self._timeout = timeout
    self._max_calls = max_calls
    self._client = None
    self._calls = None
    self._inflight: dict[str, asyncio.Future] = {}
    self._pending: list[str] = []
    self._flusher: asyncio.Task | None = None

  def _collection_ref(self):
    if self._client is None:
      from google.cloud import firestore
      self._client = firestore.AsyncClient(project=self._project, database=self._database)
      self._calls = asyncio.Semaphore(self._max_calls)
    return self._client.collection(self._collection)

  async def get_many(self, ids: Iterable[str]) -> dict[str, dict | None]:
    ids = list(ids)
    values = await asyncio.gather(*(self.get(i) for i in ids))
    return dict(zip(ids, values))

  async def get(self, customer_id: str) -> dict | None:
    future = self._inflight.get(customer_id)
    if future is None:
      future = asyncio.get_running_loop().create_future()
      self._inflight[customer_id] = future
      self._pending.append(customer_id)
      if self._flusher is None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())
    try:
      return await asyncio.wait_for(asyncio.shield(future), self._timeout * 2)
    except asyncio.TimeoutError as err:
      raise StoreUnavailable('Firestore did not answer in time') from err

  async def _flush_soon(self):
    await asyncio.sleep(self._window)
    self._flusher = None
    pending, self._pending = self._pending, []
    for start in range(0, len(pending), 100):
      asyncio.get_running_loop().create_task(self._fetch(pending[start:start + 100]))

  async def _fetch(self, ids: list[str]):
    try:
      collection = self._collection_ref()
      async with self._calls:
        found = await asyncio.wait_for(self._get_all(collection, ids), self._timeout)
    except Exception as err:  # every waiter gets the failure; the app answers 503
      failure = StoreUnavailable(f'Firestore lookup failed: {type(err).__name__}')
      for customer_id in ids:
        future = self._inflight.pop(customer_id, None)
        if future is not None and not future.done():
          future.set_exception(failure)
      return
    for customer_id in ids:
      future = self._inflight.pop(customer_id, None)
      if future is not None and not future.done():
        future.set_result(found.get(customer_id))

  async def _get_all(self, collection, ids: list[str]) -> dict[str, dict]:
    """One BatchGetDocuments call, decoded from the raw protobuf.

    Why not `client.get_all(...)` and `snapshot.to_dict()`: the library's decoding through
    proto-plus wrappers cost several times the CPU of `decode_fields` below per document, and
    cache misses are the connector's latency tail (docs/PERFORMANCE.md, "ESP connector"). The
    call itself is the library's own (its GAPIC client, retries, emulator
    metadata); only the decoding is ours. Times come back as ISO-8601 strings, as served.
    """
    prefix = f'{self._client._database_string}/documents/{collection.id}/'
    request = {'database': self._client._database_string,
               'documents': [prefix + customer_id for customer_id in ids]}
    responses = await self._client._firestore_api.batch_get_documents(
        request=request, metadata=self._client._rpc_metadata)
    found = {}
    async for response in responses:
      raw = type(response).pb(response)
      if raw.HasField('found'):
        found[raw.found.name.rsplit('/', 1)[1]] = decode_fields(raw.found.fields)
    return found

  def members_query(self, audience: str, after: str | None, count: int):
    """The query audience_members runs: documents whose `audiences` holds `audience`, ordered by
    document id, after the id `after`, at most `count`, projected on the id only (`select([])`
    is `__name__` alone: no field is transferred)."""
    from google.cloud.firestore_v1.base_query import FieldFilter
    query = (self._collection_ref()
             .where(filter=FieldFilter('audiences', 'array_contains', audience))
             .order_by('__name__').select([]).limit(count))
    return query if after is None else query.start_after({'__name__': after})

  async def audience_members(self, audience: str, after: str | None, count: int) -> list[str]:
    """Up to `count` ids, in id order and after `after`, of the documents whose `audiences` holds
    `audience`: one RunQuery. Firestore serves it from the automatic single-field array-contains
    index of `audiences`, whose entries are ordered by document id within a value, so it needs
    no composite index (docs/CONNECTOR.md, "Audience members")."""
    query = self.members_query(audience, after, count)
    try:
      return await asyncio.wait_for(self._run_for_ids(query), self._timeout)
    except Exception as err:  # any failure or timeout: the app answers 503
      raise StoreUnavailable(f'Firestore query failed: {type(err).__name__}') from err

  async def _run_for_ids(self, query) -> list[str]:
    """The ids of a RunQuery's results, read from the raw protobuf. Why not `query.stream()`:
    building a snapshot per result cost three to four times the CPU per id (measured on the
    emulator, 1,001 ids a page), and that CPU is taken from the send-time lookups sharing the
    event loop. The query is the library's own (`_to_protobuf` normalises cursor and projection)
    and so is the call (its GAPIC client, retries, emulator metadata), as in `_get_all`."""
    responses = await self._client._firestore_api.run_query(
        request={'parent': f'{self._client._database_string}/documents',
                 'structured_query': query._to_protobuf()},
        metadata=self._client._rpc_metadata)
    ids = []
    async for response in responses:
      raw = type(response).pb(response)
      if raw.HasField('document'):
        ids.append(raw.document.name.rsplit('/', 1)[1])
    return ids

  async def ping(self, timeout: float = 2.0) -> None:
    collection = self._collection_ref()
    await asyncio.wait_for(collection.limit(1).get(), timeout)

  async def close(self) -> None:
    if self._client is not None:
      self._client.close()


def _iso(timestamp) -> str:
  return shaping.iso_time(
      _EPOCH + dt.timedelta(seconds=timestamp.seconds, microseconds=timestamp.nanos // 1000))


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def decode_value(value) -> Any:
  """A raw `google.firestore.v1.Value` protobuf -> plain Python (timestamps as ISO-8601 strings,
  the way `connector.shaping` serves them; references as their path; geo points as dicts)."""
  kind = value.WhichOneof('value_type')
  if kind == 'string_value':
    return value.string_value
  if kind == 'map_value':
    return decode_fields(value.map_value.fields)
  if kind == 'array_value':
    return [decode_value(item) for item in value.array_value.values]
  if kind == 'timestamp_value':
    return _iso(value.timestamp_value)
  if kind == 'geo_point_value':
    return {'latitude': value.geo_point_value.latitude,
            'longitude': value.geo_point_value.longitude}
  if kind == 'null_value' or kind is None:
    return None
  return getattr(value, kind)  # boolean, integer, double, bytes, reference


def decode_fields(fields) -> dict:
  return {name: decode_value(value) for name, value in fields.items()}


class TtlCache:
  """id -> document (or None: known missing), each entry kept `ttl` seconds. Missing customers
  are cached too, so a send to a list of unknown ids does not hit Firestore once per recipient."""

  def __init__(self, ttl: float, max_entries: int = 100_000):
    self._ttl = ttl
    self._max = max_entries
    self._entries: dict[str, tuple[float, dict | None]] = {}
    self.hits = 0
    self.misses = 0

  def get(self, key: str):
    """(True, value) when cached and fresh, else (False, None)."""
    entry = self._entries.get(key)
    if entry is not None and entry[0] > time.monotonic():
      self.hits += 1
      return True, entry[1]
    self.misses += 1
    return False, None

  def put(self, key: str, value: dict | None) -> None:
    if self._ttl <= 0:
      return
    if len(self._entries) >= self._max:
      now = time.monotonic()
      self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
      if len(self._entries) >= self._max:
        self._entries.clear()
    self._entries[key] = (time.monotonic() + self._ttl, value)
