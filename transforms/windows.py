"""Event-time windows: events stamped with their own time, and hourly activity per customer."""
from __future__ import annotations

import decimal
import time

import apache_beam as beam
import orjson
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import Duration, Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from transforms.rules import activity
from transforms.shards import DEFAULT_SHARDS, ChunkBuffer, records

DEFAULT_ALLOWED_LATENESS_HOURS = 24
HOUR_SECONDS = 3600
HOUR_MICROS = HOUR_SECONDS * 1_000_000


def _stamp(event):
  return window.TimestampedValue(event, Timestamp(micros=event['event_time']))


class AssignEventTime(beam.PTransform):
  """Sets each event record's element timestamp to its `event_time` (from the payload,
  clock-skew corrected), replacing the read time or Pub/Sub publish time."""

  def expand(self, pcoll):
    return pcoll | 'Stamp' >> beam.Map(_stamp)


def _keyed_contribution(event):
  key = activity.activity_key(event)
  if key is not None:
    yield key, (1, activity.revenue(event))


def _row(key, totals, window_start, window_end, pane_index, pane_timing):
  customer, identified, name, currency = key
  count, revenue = totals
  return {
      'window_start': window_start,
      'window_end': window_end,
      'customer_id': customer,
      'identified': identified,
      'event_name': name,
      'event_count': count,
      'revenue': revenue,
      'currency': currency if revenue is not None else None,
      'pane_index': pane_index,
      'pane_timing': pane_timing,
      'emitted_at': time.time_ns() // 1000,
  }


class _SumActivity(beam.CombineFn):

  def create_accumulator(self):
    return 0, None

  def add_input(self, accumulator, value):
    return activity.add(accumulator, value)

  def merge_accumulators(self, accumulators):
    total = (0, None)
    for accumulator in accumulators:
      total = activity.add(total, accumulator)
    return total

  def extract_output(self, accumulator):
    return accumulator


class _HourPartialsFn(beam.DoFn):
  """Batch: events -> (shard, compressed chunk) of the bundle's partial sums per (hour, key), one
  line per key per bundle (`_partial_line`), in shards of customer ids (`transforms/shards.py`).

  Combining inside the bundle by hand: Beam lifts a CombinePerKey the same way, but through a
  per-element step (the key-extracting FlatMap) plus its own per-element table update, about
  twice the cost per event of the dict update here on the FnApiRunner (docs/PERFORMANCE.md). Keys
  are nearly as many as events (one per customer, event name and hour), so the partials then
  travel in chunks rather than one element per key: `_hour_rows` merges a shard's partials.
  The partial sums are flushed into the chunks every `MAX_PARTIALS` keys: a bundle can be a whole
  input (the FnApiRunner's is), and a dict of a key per customer and hour for all of it would
  grow with the input (about 500,000 keys for 1,000,000 events). Global window only (batch fast
  path).
  """
  MAX_PARTIALS = 20_000

  def __init__(self, shards: int):
    self._shards = shards

  def start_bundle(self):
    self._sums = {}
    self._chunks = ChunkBuffer(self._shards)

  def process(self, event):
    key = activity.activity_key(event)
    if key is not None:
      hour = event['event_time'] - event['event_time'] % HOUR_MICROS
      slot = (hour, key)
      self._sums[slot] = activity.add(self._sums.get(slot, (0, None)),
                                      (1, activity.revenue(event)))
      if len(self._sums) >= self.MAX_PARTIALS:
        yield from self._flush()

  def _flush(self):
    sums, self._sums = self._sums, {}
    for slot, totals in sums.items():
      chunk = self._chunks.add(slot[1][0], _partial_line(slot, totals))
      if chunk is not None:
        yield chunk

  def finish_bundle(self):
    for chunk in self._flush():
      yield GlobalWindows.windowed_value(chunk)
    yield from self._chunks.drain()


def _partial_line(slot, totals) -> bytes:
  (hour, (customer, identified, name, currency)), (count, revenue) = slot, totals
  return orjson.dumps([hour, customer, identified, name, currency, count,
                       None if revenue is None else str(revenue)])


def _hour_rows(_, chunks):
  """(shard, chunks of partial sums) -> one row per (hour, key) of the shard (batch: each hour
  is complete, so one on-time pane)."""
  totals = {}
  for line in records(chunks):
    hour, customer, identified, name, currency, count, revenue = orjson.loads(line)
    slot = (hour, (customer, identified, name, currency))
    totals[slot] = activity.add(totals.get(slot, (0, None)),
                                (count, None if revenue is None else decimal.Decimal(revenue)))
  for (hour, key), sums in totals.items():
    yield _row(key, sums, hour, hour + HOUR_MICROS, 0, 'ON_TIME')


class _ToRowFn(beam.DoFn):
  """((customer, identified, name, currency), (count, revenue)) in a window -> table row."""

  def process(self, element, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
    key, totals = element
    yield _row(key, totals, win.start.micros, win.end.micros, pane.index,
               PaneInfoTiming.to_string(pane.timing))


class HourlyActivity(beam.PTransform):
  """Counts events (and order revenue) per customer, event name and hour of event time.

  Input: event records whose element timestamps are their event times (`AssignEventTime`).
  Output: rows shaped like `schemas/customer_activity_hourly.avsc`.

  Trigger: one pane when the watermark passes the end of the hour, then one more pane for every
  late event that arrives within `allowed_lateness_hours`; panes ACCUMULATE, so each row carries
  the hour's full totals so far and the row with the highest `pane_index` is the current one
  (BigQuery is append-only; a discarding pane would make readers sum rows instead). Events later
  than the allowed lateness are dropped here (they still reach the events table).

  Bounded input (`streaming=False`) takes a batch fast path with the same result: every hour is
  complete before the job starts, so each key gets exactly one on-time pane, and grouping on
  (hour, key) in the global window gives it without the runner's windowed-GBK trigger machinery,
  which costs more than all the per-event rules together on the local runner (docs/PERFORMANCE.md).
  The windowed path also runs in batch; a test checks that both give the same rows.
  """

  def __init__(self, allowed_lateness_hours: float = DEFAULT_ALLOWED_LATENESS_HOURS,
               streaming: bool = True, shards: int = DEFAULT_SHARDS):
    super().__init__()
    self._shards = shards
    if allowed_lateness_hours < 0:
      raise ValueError(f'allowed_lateness_hours must be >= 0, got {allowed_lateness_hours}')
    self._lateness = Duration(seconds=allowed_lateness_hours * HOUR_SECONDS)
    self._streaming = streaming

  def expand(self, pcoll):
    if not self._streaming:
      return (pcoll
              | 'SumInBundle' >> beam.ParDo(_HourPartialsFn(self._shards)).with_output_types(
                  tuple[int, bytes])
              | 'GroupShards' >> beam.GroupByKey()
              | 'ToHourRows' >> beam.FlatMapTuple(_hour_rows))
    return (pcoll
            | 'HourlyWindows' >> beam.WindowInto(
                window.FixedWindows(HOUR_SECONDS),
                trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=self._lateness)
            | 'KeyByCustomerAndName' >> beam.FlatMap(_keyed_contribution)
            | 'Sum' >> beam.CombinePerKey(_SumActivity())
            | 'ToRow' >> beam.ParDo(_ToRowFn()))
