"""Deduplication of events by message id (Segment's and RudderStack's idempotency key)."""
from __future__ import annotations

import datetime as dt
import logging

import apache_beam as beam
from apache_beam import coders
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils import shared
from apache_beam.utils.timestamp import Duration, Timestamp

import schemas
from transforms import line_formats, metrics
from transforms.settings import BigQueryTarget, DedupeSettings, Sharding
from transforms.shards import ChunkByShard, records

_log = logging.getLogger(__name__)


class _Ids:
  """A frozenset wrapper: `Shared` keeps objects by weak reference, which frozenset refuses."""

  def __init__(self, ids: frozenset):
    self.ids = ids


def written_message_ids(warehouse: BigQueryTarget, lookback_hours: float,
                        now: dt.datetime | None = None) -> frozenset:
  """Message ids the `events` table of `warehouse` received in the last `lookback_hours` (by
  `ingested_at`; `event_time` is bounded too, one look-back earlier, so BigQuery prunes
  partitions). Empty when the table does not exist yet. Any other failure raises: without this
  set a restarted job could write events a second time."""
  from google.api_core.exceptions import NotFound
  from google.cloud import bigquery

  from transforms.sinks import bigquery_client
  now = now or dt.datetime.now(dt.timezone.utc)
  since = now - dt.timedelta(hours=lookback_hours)
  client = bigquery_client.cloud_client(warehouse.project)
  query = (f'SELECT DISTINCT message_id FROM `{warehouse.project}.{warehouse.dataset}.events` '
           'WHERE ingested_at >= @since AND event_time >= @since_event')
  config = bigquery.QueryJobConfig(query_parameters=[
      bigquery.ScalarQueryParameter('since', 'TIMESTAMP', since),
      bigquery.ScalarQueryParameter('since_event', 'TIMESTAMP',
                                    since - dt.timedelta(hours=lookback_hours))])
  try:
    rows = client.query(query, job_config=config).result()
    return frozenset(row['message_id'] for row in rows)
  except NotFound:
    return frozenset()
  finally:
    client.close()


def preference_key(event: dict) -> tuple:
  """Among events sharing a message id, the one with the smallest key is kept (batch).

  Exact duplicates are identical, so any choice is right; for distinct payloads that reuse an id
  the earliest received wins, which is what the streaming dedupe keeps too (the first to arrive).
  """
  received = event.get('received_at')
  return (received if received is not None else event['event_time'], event['event_time'],
          event['source'])


def _key_by_message_id(event):
  return event['message_id'], event


def _copy_line(event):
  """event -> (message id, copy line): the header lets the dedupe choose without decoding every
  copy (transforms/line_formats.py)."""
  message_id = event['message_id']
  return message_id, line_formats.encode_copy(message_id, preference_key(event),
                                              schemas.encode_record('events', event))


class _KeepFirstFn(beam.DoFn):
  """(shard, [compressed chunk, ...]) -> the preferred copy of each message id in the shard
  (`preference_key`, ties by encoded bytes, so the choice does not depend on arrival order);
  counts survivors and the other copies.

  Chooses from the lines' headers, holding the shard's encoded lines (bytes), then decodes each
  survivor just before emitting it: holding a shard's decoded events instead makes the garbage
  collector rescan them over and over (docs/PERFORMANCE.md, "Python's garbage collector").
  """

  def __init__(self):
    self._duplicates = metrics.counter(metrics.EVENTS_DUPLICATE)
    self._unique = metrics.counter(metrics.EVENTS_UNIQUE)

  def process(self, element):
    _, chunks = element
    kept: dict[str, tuple] = {}
    copies = 0
    for line in records(chunks):
      message_id, preference, data = line_formats.decode_copy(line)
      candidate = (preference, data)
      copies += 1
      previous = kept.get(message_id)
      if previous is None or candidate < previous:
        kept[message_id] = candidate
    self._unique.inc(len(kept))
    if copies > len(kept):
      self._duplicates.inc(copies - len(kept))
    for _, data in kept.values():
      yield schemas.decode_record('events', data)


class _FirstSeenFn(beam.DoFn):
  """Streaming dedupe: emits the first event of each message id, drops the rest for
  `settings.hours`.

  This is Beam's `DeduplicatePerKey(processing_time_duration=...)` pattern (a per-key flag and a
  processing-time timer that clears it), written out because the pipeline must count what it
  drops: `events_duplicate` is part of the accounting (read = unique + duplicates + dead letters),
  and DeduplicatePerKey drops duplicates without a trace.
  """
  SEEN = ReadModifyWriteStateSpec('seen', coders.BooleanCoder())
  EXPIRY = TimerSpec('expiry', TimeDomain.REAL_TIME)

  def __init__(self, settings: DedupeSettings, warehouse: BigQueryTarget | None = None):
    self._ttl = Duration(seconds=settings.hours * 3600)
    self._lookback_hours = settings.restart_hours
    self._warehouse = warehouse
    self._shared = shared.Shared()
    self._written = frozenset()
    self._duplicates = metrics.counter(metrics.EVENTS_DUPLICATE)
    self._unique = metrics.counter(metrics.EVENTS_UNIQUE)

  def setup(self):
    # The state of a new job starts empty (a restart after a drain or a crash, a local run
    # started again): ids an earlier job already wrote are read once per worker process.
    if self._warehouse is not None and self._lookback_hours > 0:
      def load():
        ids = written_message_ids(self._warehouse, self._lookback_hours)
        _log.info('dedupe: %d message ids written in the last %.1f h loaded from %s.%s.events',
                  len(ids), self._lookback_hours, self._warehouse.project,
                  self._warehouse.dataset)
        return _Ids(ids)
      self._written = self._shared.acquire(load).ids

  def process(self, element, seen=beam.DoFn.StateParam(SEEN),
              expiry=beam.DoFn.TimerParam(EXPIRY)):
    message_id, event = element
    if seen.read():
      self._duplicates.inc()
      return
    seen.write(True)
    expiry.set(Timestamp.now() + self._ttl)
    if message_id in self._written:
      self._duplicates.inc()
      return
    self._unique.inc()
    yield event

  @on_timer(EXPIRY)
  def expire(self, seen=beam.DoFn.StateParam(SEEN)):
    seen.clear()


class DedupeBatch(beam.PTransform):
  """Keeps one event per `message_id` of a bounded input. Input and output: event records
  (global window).

  Exact and complete across the whole input, keeping the earliest received copy
  (`preference_key`). Events travel in compressed chunks per shard of message ids
  (transforms/shards.py, cut by `sharding`), and one shard's events are held in memory at a
  time. Counts survivors (`events_unique`) and drops (`events_duplicate`).
  """

  def __init__(self, sharding: Sharding = Sharding()):
    super().__init__()
    self._sharding = sharding

  def expand(self, pcoll):
    return (pcoll
            | 'ChunkByShard' >> ChunkByShard(_copy_line, self._sharding)
            | 'GroupCopies' >> beam.GroupByKey()
            | 'KeepFirst' >> beam.ParDo(_KeepFirstFn()))


class DedupeStream(beam.PTransform):
  """Keeps one event per `message_id` of an unbounded input. Input and output: event records.

  The first copy to arrive wins and later copies are dropped for `settings.hours` (processing
  time) after it; a copy arriving after that is kept again. Counts survivors (`events_unique`)
  and drops (`events_duplicate`).

  `warehouse`: a new job also drops events whose message id the `events` table of that dataset
  received in the last `settings.restart_hours`, read once per worker process at start-up, so a
  job restarted over the same subscription (or fed the same events again) does not write them
  twice. None (or 0 hours) turns that off.
  """

  def __init__(self, settings: DedupeSettings = DedupeSettings(),
               warehouse: BigQueryTarget | None = None):
    super().__init__()
    self._settings = settings
    self._warehouse = warehouse

  def expand(self, pcoll):
    return (pcoll
            | 'KeyByMessageId' >> beam.Map(_key_by_message_id).with_output_types(
                tuple[str, dict])
            | 'FirstSeen' >> beam.ParDo(_FirstSeenFn(self._settings, self._warehouse)))
