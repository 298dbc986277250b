"""Parse and validate events; everything that fails becomes a dead-letter record."""
from __future__ import annotations

import time

import apache_beam as beam

from transforms import metrics
from transforms.rules import dead_letters, events
from transforms.rules.dead_letters import Rejection
from transforms.settings import ParseLimits

STEP = 'ParseEvents'


class _ParseEventFn(beam.DoFn):
  """(source, payload, attributes) -> event record, or a dead letter on the `dead_letter` tag."""

  def __init__(self, max_bytes: int):
    self._max_bytes = max_bytes
    self._read = metrics.counter(metrics.EVENTS_READ)
    self._valid = metrics.counter(metrics.EVENTS_VALID)
    self._dead = metrics.counter(metrics.EVENTS_DEAD_LETTERED)

  def process(self, element):
    source, payload, attributes = element
    self._read.inc()
    now = time.time_ns() // 1000
    result = events.parse_event(payload, source, now, self._max_bytes)
    if isinstance(result, Rejection):
      self._dead.inc()
      metrics.counter(
          metrics.DEAD_LETTER_BY_TYPE.format(failure_type=result.failure_type)).inc()
      yield beam.pvalue.TaggedOutput('dead_letter', dead_letters.dead_letter(
          result.failure_type, result.message, STEP, payload, source, now, attributes))
    else:
      self._valid.inc()
      yield result


class ParseEvents(beam.PTransform):
  """Parses, validates and normalises Segment events.

  Input: `(source, payload, attributes)` triples: payload the raw bytes of one JSON event,
  attributes the Pub/Sub message attributes (or None for files). Output: a tuple with
  `events` (event records shaped like `schemas/events.avsc`, JSON columns as Python objects, times
  as epoch microseconds) and `dead_letter` (records shaped like `schemas/dead_letter.avsc`).
  Every input element lands in exactly one of the two; payloads over `limits.max_message_bytes`
  are dead letters (size_violation).
  """

  def __init__(self, limits: ParseLimits = ParseLimits()):
    super().__init__()
    self._max_bytes = limits.max_message_bytes

  def expand(self, pcoll):
    return pcoll | 'Parse' >> beam.ParDo(_ParseEventFn(self._max_bytes)).with_outputs(
        'dead_letter', main='events')
