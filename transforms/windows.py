"""Event-time windows: events stamped with their own time, and hourly activity per customer."""
from __future__ import annotations

import time

import apache_beam as beam
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import Duration, Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from transforms import line_formats
from transforms.rules import activity
from transforms.settings import HourlySettings, Sharding
from transforms.shards import ChunkBuffer, records

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
  partial line per key per bundle (transforms/line_formats.py), in shards of customer ids
  (transforms/shards.py).

  Combining inside the bundle by hand: Beam lifts a CombinePerKey the same way, but through a
  per-element step (the key-extracting FlatMap) plus its own per-element table update, which
  cost more per event than the dict update here on the FnApiRunner (docs/PERFORMANCE.md). Keys
  are nearly as many as events (one per customer, event name and hour), so the partials then
  travel in chunks rather than one element per key: `_hour_rows` merges a shard's partials.
  The partial sums are flushed into the chunks every `MAX_PARTIALS` keys: a bundle can be a whole
  input (the FnApiRunner's is), and a dict of a key per customer and hour for all of it would
  grow with the input. Global window only (batch).
  """
  MAX_PARTIALS = 20_000

  def __init__(self, sharding: Sharding):
    self._sharding = sharding

  def start_bundle(self):
    self._sums = {}
    self._chunks = ChunkBuffer(self._sharding)

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
      chunk = self._chunks.add(slot[1][0], line_formats.encode_partial(slot, totals))
      if chunk is not None:
        yield chunk

  def finish_bundle(self):
    for chunk in self._flush():
      yield GlobalWindows.windowed_value(chunk)
    yield from self._chunks.drain()


def _hour_rows(_, chunks):
  """(shard, chunks of partial sums) -> one row per (hour, key) of the shard (batch: each hour
  is complete, so one on-time pane)."""
  totals = {}
  for line in records(chunks):
    slot, partial = line_formats.decode_partial(line)
    totals[slot] = activity.add(totals.get(slot, (0, None)), partial)
  for (hour, key), sums in totals.items():
    yield _row(key, sums, hour, hour + HOUR_MICROS, 0, 'ON_TIME')


class _ToRowFn(beam.DoFn):
  """((customer, identified, name, currency), (count, revenue)) in a window -> table row."""

  def process(self, element, win=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
    key, totals = element
    yield _row(key, totals, win.start.micros, win.end.micros, pane.index,
               PaneInfoTiming.to_string(pane.timing))


class HourlyBatch(beam.PTransform):
  """Counts events (and order revenue) per customer, event name and hour of event time, over a
  bounded input.

  Input: event records (global window; element timestamps are not read: the hour comes from
  `event_time`). Output: rows shaped like `schemas/customer_activity_hourly.avsc`, the rows
  `HourlyWindowed` gives once the watermark has passed every hour: every hour is complete
  before the job starts, so each key gets exactly one on-time pane (`pane_index` 0). Grouping on
  (hour, key) in the global window gives it without the runner's windowed-GBK trigger
  machinery, which costs more than all the per-event rules together on the local runner
  (docs/PERFORMANCE.md). The partial sums travel in chunks cut by `sharding`
  (transforms/shards.py). A test checks that both composites give the same rows.
  """

  def __init__(self, sharding: Sharding = Sharding()):
    super().__init__()
    self._sharding = sharding

  def expand(self, pcoll):
    return (pcoll
            | 'SumInBundle' >> beam.ParDo(_HourPartialsFn(self._sharding)).with_output_types(
                tuple[int, bytes])
            | 'GroupShards' >> beam.GroupByKey()
            | 'ToHourRows' >> beam.FlatMapTuple(_hour_rows))


class HourlyWindowed(beam.PTransform):
  """Counts events (and order revenue) per customer, event name and hour of event time, in
  event-time windows.

  Input: event records whose element timestamps are their event times (`AssignEventTime`).
  Output: rows shaped like `schemas/customer_activity_hourly.avsc`.

  Trigger: one pane when the watermark passes the end of the hour, then one more pane for every
  late event that arrives within `settings.allowed_lateness_hours`; panes ACCUMULATE, so each row
  carries the hour's full totals so far and the row with the highest `pane_index` is the current
  one (BigQuery is append-only; a discarding pane would make readers sum rows instead). Events
  later than the allowed lateness are dropped here (they still reach the events table).
  """

  def __init__(self, settings: HourlySettings = HourlySettings()):
    super().__init__()
    self._lateness = Duration(seconds=settings.allowed_lateness_hours * HOUR_SECONDS)

  def expand(self, pcoll):
    return (pcoll
            | 'HourlyWindows' >> beam.WindowInto(
                window.FixedWindows(HOUR_SECONDS),
                trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
                allowed_lateness=self._lateness)
            | 'KeyByCustomerAndName' >> beam.FlatMap(_keyed_contribution)
            | 'Sum' >> beam.CombinePerKey(_SumActivity())
            | 'ToRow' >> beam.ParDo(_ToRowFn()))
