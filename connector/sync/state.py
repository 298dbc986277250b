"""What each destination last received, per customer, in Firestore.

`{state_collection}/{destination}/customers/{customer_id}` holds `attributes`: a map of ESP
attribute -> [hash of the value delivered, version it came from] (transforms/rules/changes.py).
Hashes, not values: the state says whether a value is new without keeping a copy of the
profile. Erasing a customer deletes these documents too (pipeline/erase.py).
"""
from __future__ import annotations

from typing import Iterable, Mapping

from google.api_core import retry as api_retry
from google.api_core import exceptions as api_exceptions

from connector.store import decode_fields

FIELD = 'attributes'
CUSTOMERS = 'customers'
MAX_WRITES = 500  # Firestore's limit per commit
_TRANSIENT = (api_exceptions.ServiceUnavailable, api_exceptions.DeadlineExceeded,
              api_exceptions.InternalServerError, api_exceptions.Aborted,
              api_exceptions.TooManyRequests)


class StateStore:

  def __init__(self, project: str, database: str, collection: str, retry_seconds: float = 60.0):
    from google.cloud import firestore  # honours FIRESTORE_EMULATOR_HOST
    self._client = firestore.Client(project=project, database=database)
    self._collection = collection
    self._retry = api_retry.Retry(predicate=api_retry.if_exception_type(*_TRANSIENT),
                                  initial=0.2, maximum=5.0, timeout=retry_seconds)

  def _ref(self, destination: str, customer_id: str):
    return (self._client.collection(self._collection).document(destination)
            .collection(CUSTOMERS).document(customer_id))

  def get(self, destination: str, customer_ids: Iterable[str]) -> dict[str, dict]:
    """customer id -> {attribute: (hash, version)} for those with a state.

    One BatchGetDocuments call per 500 ids, decoded from the raw protobuf with the connector's
    `decode_fields` (connector/store.py): the library's snapshots cost about two thirds of each
    read in parsing (docs/PERFORMANCE.md, "Sync worker"). The call is the library's own (its
    GAPIC client, retries, emulator metadata); only the decoding is ours.
    """
    ids = list(customer_ids)
    found: dict[str, dict] = {}
    client = self._client
    for start in range(0, len(ids), MAX_WRITES):
      names = [self._ref(destination, c)._document_path for c in ids[start:start + MAX_WRITES]]
      responses = client._firestore_api.batch_get_documents(
          request={'database': client._database_string, 'documents': names},
          metadata=client._rpc_metadata, retry=self._retry)
      for response in responses:
        raw = type(response).pb(response)
        if raw.HasField('found'):
          fields = decode_fields(raw.found.fields)
          found[raw.found.name.rsplit('/', 1)[1]] = {
              a: (h, int(v)) for a, (h, v) in (fields.get(FIELD) or {}).items()}
    return found

  def put(self, destination: str, updates: Mapping[str, Mapping[str, tuple[str, int]]]) -> None:
    """Merges each customer's attribute states into the stored ones."""
    pending = [(c, u) for c, u in updates.items() if u]
    for start in range(0, len(pending), MAX_WRITES):
      batch = self._client.batch()
      for customer_id, attributes in pending[start:start + MAX_WRITES]:
        batch.set(self._ref(destination, customer_id),
                  {FIELD: {a: [h, v] for a, (h, v) in attributes.items()}}, merge=True)
      batch.commit(retry=self._retry)

  def close(self) -> None:
    self._client.close()
