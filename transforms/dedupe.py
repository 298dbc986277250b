"""Exact deduplication of events by message id."""
from __future__ import annotations

import apache_beam as beam

from transforms import metrics


def preference_key(event: dict) -> tuple:
  """Among events sharing a message id, the one with the smallest key is kept.

  Exact duplicates are identical, so any choice is right; for distinct payloads that reuse an id
  the earliest received wins, which is what a streaming dedupe would have kept.
  """
  received = event.get('received_at')
  return (received if received is not None else event['event_time'], event['event_time'],
          event['source'])


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


class DedupeEvents(beam.PTransform):
  """Keeps one event per `message_id`, exactly and across the whole (bounded) input.

  Input and output: event records. Counts duplicates (`events_duplicate`) and survivors
  (`events_unique`). Batch only: it groups in the global window, which never fires on an
  unbounded input; streaming uses a look-back dedupe instead.
  """

  def expand(self, pcoll):
    return (pcoll
            | 'KeyByMessageId' >> beam.Map(lambda event: (event['message_id'], event))
            | 'KeepFirst' >> beam.CombinePerKey(_KeepFirst())
            | 'EmitKept' >> beam.ParDo(_EmitKept()))
