"""Publishing trigger records to Pub/Sub (the connector's trigger worker consumes them)."""
from __future__ import annotations

import apache_beam as beam
import orjson

import schemas
from transforms import metrics
from transforms.settings import TriggersTopic


class _PublishFn(beam.DoFn):
  """Publishes each record as JSON, with `trigger_id` as an attribute (the idempotency key);
  waits for every publish of a bundle before the bundle completes, so a failure fails the bundle
  (and the runner retries it) instead of losing the trigger."""

  def __init__(self, topic: str, record: str):
    self._topic = topic
    self._record = record
    self._published = metrics.counter(metrics.TRIGGERS_PUBLISHED)

  def setup(self):
    from google.cloud import pubsub_v1  # honours PUBSUB_EMULATOR_HOST
    self._publisher = pubsub_v1.PublisherClient()

  def start_bundle(self):
    self._futures = []

  def process(self, record):
    payload = orjson.dumps(schemas.to_json_message(self._record, record))
    self._futures.append(self._publisher.publish(self._topic, payload,
                                                 trigger_id=record['trigger_id']))

  def finish_bundle(self):
    for future in self._futures:
      future.result(timeout=60)
    self._published.inc(len(self._futures))
    self._futures = []


class PublishRecords(beam.PTransform):
  """Publishes records of `record` (a schema in `schemas/`) to the Pub/Sub `topic` as JSON
  objects (times RFC 3339, nested fields as objects). Input: records. Output: nothing."""

  def __init__(self, topic: TriggersTopic, record: str = 'cart_triggers'):
    super().__init__()
    self._topic = topic.path
    self._record = record

  def expand(self, pcoll):
    return pcoll | 'Publish' >> beam.ParDo(_PublishFn(self._topic, self._record))
