"""Firestore serving layer: one document per customer, written in batched commits, and the
profile change each write makes (schemas/profile_change.schema.json)."""
from __future__ import annotations

import datetime as dt
import logging
import time
import typing

import apache_beam as beam
import orjson
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry

import schemas
from transforms import metrics
from transforms.rules import changes as profile_changes
from transforms.rules import dead_letters, served, serving
from transforms.settings import FirestoreLocation, FirestoreRetry, RedisTier, TriggersTopic
from transforms.sinks.redis_tier import RedisWriter

MAX_BATCH_WRITES = 500  # Firestore's limit of writes per commit.
INVALID_DOCUMENT_ID = 'invalid_document_id'
STEP = 'WriteDocuments'
# Attempts at a batch whose preconditions failed because a document changed under it.
MAX_PRECONDITION_ATTEMPTS = 5

_log = logging.getLogger(__name__)

# Errors worth retrying: Firestore unreachable or overloaded, or a call that timed out.
_TRANSIENT = (api_exceptions.ServiceUnavailable, api_exceptions.DeadlineExceeded,
              api_exceptions.InternalServerError, api_exceptions.Aborted,
              api_exceptions.TooManyRequests)


class FirestoreUnavailable(RuntimeError):
  """Firestore kept failing for the whole retry budget. Raised from the writer, it fails the
  bundle: Dataflow retries the bundle, a local runner fails the run with this message."""
# A precondition failed: someone wrote one of the documents between our read and our commit.
_RACE = (api_exceptions.FailedPrecondition, api_exceptions.AlreadyExists,
         api_exceptions.NotFound)


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


def is_stale(stored_last_event_at, new_last_event_at) -> bool:
  """True when the stored document reflects newer events than the one about to be written."""
  if stored_last_event_at is None or new_last_event_at is None:
    return False
  return stored_last_event_at > new_last_event_at


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
  """A list of (document id, document or None) -> one batched commit.

  Monotonic and idempotent: the batch first reads the stored documents (one `get_all`), skips a
  document whose stored `last_event_at` is newer (a replay or a retry of older state never moves
  it back) or whose content is the same (a re-run writes nothing), and commits with
  preconditions: `create` for a new document, `update` (every top-level field, so the result is
  the new document) or `delete` guarded by the stored `update_time`. If a document changed in
  between, the commit fails as a whole and the batch is read and tried again. Chosen over one
  transaction per document: one read and one commit per 500 documents instead of 500 round trips.

  Each write gets `version` = max(stored version + 1, now in micros) and makes one profile
  change (transforms/rules/changes.py). With a changes topic, the batch's changes are published
  *before* the commit and the commit waits for them: a failure after the publish retries the
  bundle, which re-reads the stored documents and publishes the same change (same `change_id`)
  again or, if the commit had landed, nothing; a change is never lost, at worst repeated.

  Outputs `(document id, document, written_at)` for every document written, and the change
  records on the `changes` tag.
  """

  def __init__(self, location: FirestoreLocation, retry: FirestoreRetry,
               changes_topic: str | None = None, redis: RedisTier | None = None):
    self._changes_topic = changes_topic
    self._redis_tier = redis
    self._redis = None
    self._retry_seconds = retry.seconds
    self._project = location.project
    self._database = location.database
    self._collection = location.collection
    self._client = None
    self._written = metrics.counter(metrics.DOCUMENTS_WRITTEN)
    self._deleted = metrics.counter(metrics.DOCUMENTS_DELETED)
    self._stale = metrics.counter(metrics.DOCUMENTS_STALE_SKIPPED)
    self._commits = metrics.counter(metrics.FIRESTORE_COMMITS)
    self._superseded = metrics.counter(metrics.DOCUMENTS_SUPERSEDED)
    self._retries = metrics.counter(metrics.FIRESTORE_RETRIES)
    self._unchanged = metrics.counter(metrics.DOCUMENTS_UNCHANGED)
    self._published = metrics.counter(metrics.PROFILE_CHANGES_PUBLISHED)
    self._redis_written = metrics.counter(metrics.REDIS_ENTRIES_WRITTEN)
    self._redis_not_newer = metrics.counter(metrics.REDIS_ENTRIES_NOT_NEWER)
    self._redis_retries = metrics.counter(metrics.REDIS_RETRIES)
    self._event_lag = metrics.distribution(metrics.DOCUMENT_EVENT_LAG_MS)
    self._publish_lag = metrics.distribution(metrics.DOCUMENT_PUBLISH_LAG_MS)

  def setup(self):
    from google.cloud import firestore  # honours FIRESTORE_EMULATOR_HOST
    self._publisher = None
    if self._changes_topic is not None:
      from google.cloud import pubsub_v1  # honours PUBSUB_EMULATOR_HOST
      self._publisher = pubsub_v1.PublisherClient()
    self._client = firestore.Client(project=self._project, database=self._database)
    if self._redis_tier is not None:
      self._redis = RedisWriter(self._redis_tier, on_retry=lambda err: self._redis_retries.inc())
    self._server_time = firestore.SERVER_TIMESTAMP
    # Transient errors are retried with exponential backoff and jitter (google.api_core) for at
    # most `retry_seconds`, each call bounded by `_call_timeout`; then FirestoreUnavailable.
    self._call_timeout = max(1.0, min(30.0, self._retry_seconds / 2))
    self._retry = api_retry.Retry(predicate=api_retry.if_exception_type(*_TRANSIENT),
                                  initial=0.5, maximum=10.0, multiplier=2.0,
                                  timeout=self._retry_seconds, on_error=self._on_error)

  def _on_error(self, err):
    self._retries.inc()
    _log.warning('Firestore call failed (%s: %s); retrying with backoff for up to %.0f s',
                 type(err).__name__, str(err)[:200], self._retry_seconds)

  def process(self, batch):
    # A streaming fold emits a document per event, so one batch can hold several versions of a
    # document, in the order they were made: only the last is written.
    latest = dict(batch)
    if len(batch) > len(latest):
      self._superseded.inc(len(batch) - len(latest))
    published = {}
    for doc_id, document in latest.items():
      if document is not None and serving.PUBLISHED_AT in document:
        document = dict(document)
        published[doc_id] = document.pop(serving.PUBLISHED_AT)
        latest[doc_id] = document
    for attempt in range(1, MAX_PRECONDITION_ATTEMPTS + 1):
      try:
        written, deleted, stale, unchanged, changes, entries = self._commit(latest)
        break
      except _RACE as err:
        if attempt == MAX_PRECONDITION_ATTEMPTS:
          raise
        _log.info('documents changed during a commit (%s); reading them again', err)
      except (api_exceptions.RetryError, *_TRANSIENT) as err:
        raise FirestoreUnavailable(
            f'Firestore ({self._project}, collection {self._collection}) kept failing for '
            f'{self._retry_seconds:.0f} s of retries; {len(latest)} documents of this batch are '
            f'not written: {type(err).__name__}: {str(err)[:300]}') from err
    self._commits.inc()
    if self._redis is not None:
      # After the commit: Redis never holds a version Firestore does not. A failure here fails
      # the bundle (RedisUnavailable); its retry finds the documents unchanged and puts the
      # stored entries again, so Redis catches up before the bundle counts as written.
      put, not_newer = self._redis.put(entries)
      self._redis_written.inc(put)
      self._redis_not_newer.inc(not_newer)
    self._written.inc(len(written))
    self._deleted.inc(deleted)
    self._stale.inc(stale)
    self._unchanged.inc(unchanged)
    now = time.time_ns() // 1000
    for doc_id, document in written:
      self._observe_freshness(document, now, published.get(doc_id))
      yield doc_id, document, now
    for change in changes:
      yield beam.pvalue.TaggedOutput('changes', change)

  def _commit(self, latest: dict):
    collection = self._client.collection(self._collection)
    refs = {doc_id: collection.document(doc_id) for doc_id in latest}
    # Whole documents: the change of each write is its difference from the stored one.
    stored = {snap.id: snap for snap in self._client.get_all(
        list(refs.values()), retry=self._retry, timeout=self._call_timeout)}
    writes = self._client.batch()
    written, changes, deleted, stale, unchanged = [], [], 0, 0, 0
    # Each customer's serving-tier entry once this batch is committed (--redis_url).
    entries: dict[str, served.Entry] = {}
    now = time.time_ns() // 1000
    for doc_id, document in latest.items():
      snapshot = stored.get(doc_id)
      exists = snapshot is not None and snapshot.exists
      before = snapshot.to_dict() if exists else None
      if document is None:
        if exists:
          writes.delete(refs[doc_id],
                        option=self._client.write_option(last_update_time=snapshot.update_time))
          deleted += 1
          change = profile_changes.profile_change(
              doc_id, before, None, profile_changes.next_version(before.get('version'), now), now)
          changes.append(change)
          entries[doc_id] = served.entry(None, change['version'])
        else:  # already gone; a tombstone, in case an earlier try stopped before Redis had it
          entries[doc_id] = served.entry(None, profile_changes.next_version(None, now))
        continue
      if exists and is_stale(before.get('last_event_at'), document.get('last_event_at')):
        stale += 1
        self._keep_entry(entries, doc_id, before)
        continue
      version = profile_changes.next_version(before.get('version') if exists else None, now)
      change = profile_changes.profile_change(doc_id, before, document, version, now)
      if change is None:  # the same content as stored: a re-run or replay writes nothing
        unchanged += 1
        self._keep_entry(entries, doc_id, before)
        continue
      changes.append(change)
      document = {**document, profile_changes.VERSION: version}
      data = {**document, 'updated_at': self._server_time}
      if exists:
        writes.update(refs[doc_id], data,
                      option=self._client.write_option(last_update_time=snapshot.update_time))
      else:
        writes.create(refs[doc_id], data)
      written.append((doc_id, document))
      if self._redis is not None:
        entries[doc_id] = served.entry(document, version)
    if written or deleted:
      self._publish(changes)
      writes.commit(retry=self._retry, timeout=self._call_timeout)
    return written, deleted, stale, unchanged, changes, entries

  def _observe_freshness(self, document: dict, committed: int, published: int | None) -> None:
    """The lags of one written document: its newest event's event time, and (streaming) that
    event's Pub/Sub publish time, to the commit, in milliseconds."""
    last = document.get('last_event_at')
    if isinstance(last, dt.datetime):
      self._event_lag.update(max(0, committed - schemas.datetime_to_micros(last)) // 1000)
    if isinstance(published, int):
      self._publish_lag.update(max(0, committed - published) // 1000)

  def _keep_entry(self, entries: dict, doc_id: str, stored: dict) -> None:
    """The stored document's entry, put again when nothing is written (the version check makes
    it a no-op when Redis has it): how Redis catches up after a failed put."""
    if self._redis is not None and isinstance(stored.get(profile_changes.VERSION), int):
      entries[doc_id] = served.entry(stored, stored[profile_changes.VERSION])

  def _publish(self, changes: list) -> None:
    """Publishes the batch's changes and waits for every one (a failure fails the bundle)."""
    if self._publisher is None or not changes:
      return
    futures = [self._publisher.publish(self._changes_topic, orjson.dumps(change),
                                       change_id=change['change_id'],
                                       customer_id=change['customer_id'])
               for change in changes]
    for future in futures:
      future.result(timeout=60)
    self._published.inc(len(futures))

  def teardown(self):
    if self._client is not None:
      self._client.close()
    if self._redis is not None:
      self._redis.close()


class _WriteOutputs(typing.NamedTuple):
  written: beam.PCollection
  dead_letter: beam.PCollection
  changes: beam.PCollection  # profile change records, one per document write


class WriteDocuments(beam.PTransform):
  """Writes `(document id, document or None)` pairs to the `location` collection, up to 500 per
  commit.

  A document replaces the stored one (unless the stored one reflects newer events) and gets
  `updated_at` = commit time; None deletes the stored document (consent withdrawn). Output: a
  tuple with `written` — `(document id, document, written_at micros)` per document written — and
  `dead_letter` for ids Firestore cannot store, and `changes`, the profile change of each write
  (schemas/profile_change.schema.json), also published on `changes_topic` when one is given.
  A document with the same content as the stored one is not written. With `redis`, each
  customer's served entry (transforms/rules/served.py) is put into Redis after the commit,
  version-checked, and a failing Redis fails the bundle like a failing Firestore
  (docs/OPERATIONS.md, "The Redis serving tier"). A document may carry
  `transforms.rules.serving.PUBLISHED_AT` (streaming): it is measured
  (`document_publish_lag_ms`) and dropped, never stored. Honours
  FIRESTORE_EMULATOR_HOST and PUBSUB_EMULATOR_HOST. Transient
  Firestore errors are retried with backoff for up to `retry.seconds` (counted in
  `firestore_retries`); after that the bundle fails with FirestoreUnavailable, never silently.
  """

  def __init__(self, location: FirestoreLocation, retry: FirestoreRetry = FirestoreRetry(),
               changes_topic: TriggersTopic | None = None, redis: RedisTier | None = None):
    super().__init__()
    self._location = location
    self._retry = retry
    self._redis = redis
    self._changes_topic = changes_topic.path if changes_topic is not None else None

  def expand(self, pcoll):
    checked = pcoll | 'CheckIds' >> beam.ParDo(_CheckIdFn()).with_outputs(
        'dead_letter', main='documents')
    written = (checked.documents
               | 'Batch' >> beam.BatchElements(min_batch_size=MAX_BATCH_WRITES,
                                               max_batch_size=MAX_BATCH_WRITES)
               | 'Commit' >> beam.ParDo(_CommitBatchFn(
                   self._location, self._retry, self._changes_topic, self._redis)).with_outputs(
                       'changes', main='written'))
    return _WriteOutputs(written.written, checked.dead_letter, written.changes)
