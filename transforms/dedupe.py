"""Deduplication of events by message id (Segment's and RudderStack's idempotency key)."""
from __future__ import annotations

import apache_beam as beam
from apache_beam import coders
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.timestamp import Duration, Timestamp

from transforms import metrics

DEFAULT_DEDUPE_HOURS = 24


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


class _KeepFirst(beam.CombineFn):
  """Combines the events of one message id into (kept event, how many were seen).

  A CombineFn rather than GroupByKey: the runner lifts it before the shuffle, so duplicates are
  dropped early and a message id is never materialised as a list.
  """

  def create_accumulator(self):
    return None, 0

  def add_input(self, accumulator, event):
    best, count = accumulator
    if best is None or preference_key(event) < preference_key(best):
      best = event
    return best, count + 1

  def merge_accumulators(self, accumulators):
    best, total = None, 0
    for candidate, count in accumulators:
      total += count
      if candidate is not None and (best is None or
                                    preference_key(candidate) < preference_key(best)):
        best = candidate
    return best, total

  def extract_output(self, accumulator):
    return accumulator


class _EmitKept(beam.DoFn):

  def __init__(self):
    self._duplicates = metrics.counter(metrics.EVENTS_DUPLICATE)
    self._unique = metrics.counter(metrics.EVENTS_UNIQUE)

  def process(self, element):
    _, (event, count) = element
    self._unique.inc()
    if count > 1:
      self._duplicates.inc(count - 1)
    yield event


class _FirstSeenFn(beam.DoFn):
  """Streaming dedupe: emits the first event of each message id, drops the rest for `ttl`.

  This is Beam's `DeduplicatePerKey(processing_time_duration=...)` pattern (a per-key flag and a
  processing-time timer that clears it), written out because the pipeline must count what it
  drops: `events_duplicate` is part of the accounting (read = unique + duplicates + dead letters),
  and DeduplicatePerKey drops duplicates without a trace.
  """
  SEEN = ReadModifyWriteStateSpec('seen', coders.BooleanCoder())
  EXPIRY = TimerSpec('expiry', TimeDomain.REAL_TIME)

  def __init__(self, ttl_seconds: float):
    self._ttl = Duration(seconds=ttl_seconds)
    self._duplicates = metrics.counter(metrics.EVENTS_DUPLICATE)
    self._unique = metrics.counter(metrics.EVENTS_UNIQUE)

  def process(self, element, seen=beam.DoFn.StateParam(SEEN),
              expiry=beam.DoFn.TimerParam(EXPIRY)):
    _, event = element
    if seen.read():
      self._duplicates.inc()
      return
    seen.write(True)
    expiry.set(Timestamp.now() + self._ttl)
    self._unique.inc()
    yield event

  @on_timer(EXPIRY)
  def expire(self, seen=beam.DoFn.StateParam(SEEN)):
    seen.clear()


class DedupeEvents(beam.PTransform):
  """Keeps one event per `message_id`. Input and output: event records (global window).

  Bounded input (`streaming=False`): exact and complete across the whole input, keeping the
  earliest received copy. Unbounded input: the first copy to arrive wins and later copies are
  dropped for `dedupe_hours` (processing time) after it; a copy arriving after that is kept again.
  Both count survivors (`events_unique`) and drops (`events_duplicate`).
  """

  def __init__(self, streaming: bool = False, dedupe_hours: float = DEFAULT_DEDUPE_HOURS):
    super().__init__()
    if dedupe_hours <= 0:
      raise ValueError(f'dedupe_hours must be positive, got {dedupe_hours}')
    self._streaming = streaming
    self._ttl_seconds = dedupe_hours * 3600

  def expand(self, pcoll):
    keyed = pcoll | 'KeyByMessageId' >> beam.Map(_key_by_message_id).with_output_types(
        tuple[str, dict])
    if self._streaming:
      return keyed | 'FirstSeen' >> beam.ParDo(_FirstSeenFn(self._ttl_seconds))
    return (keyed
            | 'KeepFirst' >> beam.CombinePerKey(_KeepFirst())
            | 'EmitKept' >> beam.ParDo(_EmitKept()))
