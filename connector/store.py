"""Reading serving documents from Firestore, behind an in-process TTL cache."""
from __future__ import annotations

import asyncio
import time
from typing import Iterable


class DocumentStore:
  """Firestore `collection` documents by id (google-cloud-firestore's async client; it honours
  FIRESTORE_EMULATOR_HOST). Created once per process, on the first request."""

  def __init__(self, project: str, database: str, collection: str):
    self._project = project
    self._database = database
    self._collection = collection
    self._client = None

  def _collection_ref(self):
    if self._client is None:
      from google.cloud import firestore
      self._client = firestore.AsyncClient(project=self._project, database=self._database)
    return self._client.collection(self._collection)

  async def get_many(self, ids: Iterable[str]) -> dict[str, dict | None]:
    collection = self._collection_ref()
    refs = [collection.document(i) for i in ids]
    found: dict[str, dict | None] = {ref.id: None for ref in refs}
    async for snapshot in self._client.get_all(refs):
      if snapshot.exists:
        found[snapshot.id] = snapshot.to_dict()
    return found

  async def ping(self, timeout: float = 2.0) -> None:
    collection = self._collection_ref()
    await asyncio.wait_for(collection.limit(1).get(), timeout)

  async def close(self) -> None:
    if self._client is not None:
      self._client.close()


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
