"""Firestore serving layer: one document per customer, written in batched commits."""
from __future__ import annotations

import time

import apache_beam as beam
import orjson
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry

from transforms import metrics
from transforms.rules import dead_letters

MAX_BATCH_WRITES = 500  # Firestore's limit of writes per commit.
INVALID_DOCUMENT_ID = 'invalid_document_id'
STEP = 'WriteDocuments'

# Transient errors are retried with backoff, bounded; after that the error reaches the runner,
# which retries the bundle (Dataflow) or fails the run loudly (local runners).
_COMMIT_RETRY = api_retry.Retry(
    predicate=api_retry.if_exception_type(api_exceptions.ServiceUnavailable,
                                          api_exceptions.DeadlineExceeded,
                                          api_exceptions.InternalServerError,
                                          api_exceptions.Aborted),
    initial=0.5, maximum=10.0, multiplier=2.0, timeout=120.0)


def document_id_problem(doc_id: object) -> str | None:
  """Why `doc_id` cannot name a Firestore document, or None when it can."""
  if not isinstance(doc_id, str) or not doc_id:
    return 'document id must be a non-empty string'
  if '/' in doc_id:
    return f'document id {doc_id[:100]!r} contains "/"'
  if doc_id in ('.', '..') or (doc_id.startswith('__') and doc_id.endswith('__')):
    return f'document id {doc_id[:100]!r} is reserved by Firestore'
  if len(doc_id.encode()) > 1500:
    return 'document id is longer than 1,500 bytes'
  return None


class _CheckIdFn(beam.DoFn):

  def process(self, element):
    doc_id, document = element
    problem = document_id_problem(doc_id)
    if problem is None:
      yield element
    else:
      metrics.counter(metrics.DEAD_LETTER_BY_TYPE.format(failure_type=INVALID_DOCUMENT_ID)).inc()
      yield beam.pvalue.TaggedOutput('dead_letter', dead_letters.dead_letter(
          INVALID_DOCUMENT_ID, problem, STEP,
          orjson.dumps({'customer_id': doc_id}, default=str), 'pipeline', time.time_ns() // 1000))


class _CommitBatchFn(beam.DoFn):
  """A list of (document id, document) -> one batched commit (`set`, whole document)."""

  def __init__(self, project: str, database: str, collection: str):
    self._project = project
    self._database = database
    self._collection = collection
    self._client = None
    self._written = metrics.counter(metrics.DOCUMENTS_WRITTEN)
    self._commits = metrics.counter(metrics.FIRESTORE_COMMITS)
    self._superseded = metrics.counter(metrics.DOCUMENTS_SUPERSEDED)

  def setup(self):
    from google.cloud import firestore  # honours FIRESTORE_EMULATOR_HOST
    self._client = firestore.Client(project=self._project, database=self._database)
    self._server_time = firestore.SERVER_TIMESTAMP

  def process(self, batch):
    # A streaming fold emits a document per event, so one batch can hold several versions of a
    # document, in the order they were made: only the last is written (one write per document
    # per commit, and no point writing a version that is already stale).
    latest = dict(batch)
    collection = self._client.collection(self._collection)
    writes = self._client.batch()
    for doc_id, document in latest.items():
      writes.set(collection.document(doc_id), {**document, 'updated_at': self._server_time})
    writes.commit(retry=_COMMIT_RETRY, timeout=60.0)
    self._commits.inc()
    self._written.inc(len(latest))
    if len(batch) > len(latest):
      self._superseded.inc(len(batch) - len(latest))
    yield len(latest)

  def teardown(self):
    if self._client is not None:
      self._client.close()


class WriteDocuments(beam.PTransform):
  """Writes `(document id, document)` pairs to `collection`, up to 500 per commit.

  Each write replaces the whole document and stamps `updated_at` with the commit time. Output:
  dead-letter records for ids Firestore cannot store. Honours FIRESTORE_EMULATOR_HOST.
  """

  def __init__(self, project: str, collection: str, database: str = '(default)'):
    super().__init__()
    if not project or not collection:
      raise ValueError('WriteDocuments needs a project and a collection')
    if '/' in collection:
      raise ValueError(f'collection must be a top-level collection name, got {collection!r}')
    self._project = project
    self._collection = collection
    self._database = database

  def expand(self, pcoll):
    checked = pcoll | 'CheckIds' >> beam.ParDo(_CheckIdFn()).with_outputs(
        'dead_letter', main='documents')
    _ = (checked.documents
         | 'Batch' >> beam.BatchElements(min_batch_size=MAX_BATCH_WRITES,
                                         max_batch_size=MAX_BATCH_WRITES)
         | 'Commit' >> beam.ParDo(
             _CommitBatchFn(self._project, self._database, self._collection)))
    return checked.dead_letter
