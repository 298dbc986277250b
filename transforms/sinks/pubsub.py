"""Publishing trigger records and audience changes to Pub/Sub (the connector's trigger worker
consumes both: one delivery mechanism, signed webhooks)."""
from __future__ import annotations

import apache_beam as beam
import orjson

import schemas
from transforms import metrics
from transforms.rules.audiences import membership
from transforms.settings import TriggersTopic


class _PublishFn(beam.DoFn):
  """Publishes each record as JSON, with `trigger_id` as an attribute (the idempotency key);
  waits for every publish of a bundle before the bundle completes, so a failure fails the bundle
  (and the runner retries it) instead of losing the trigger."""

  def __init__(self, topic: str, record: str, counter: str = metrics.TRIGGERS_PUBLISHED):
    self._topic = topic
    self._record = record
    self._published = metrics.counter(counter)

  def setup(self):
    from google.cloud import pubsub_v1  # honours PUBSUB_EMULATOR_HOST
    self._publisher = pubsub_v1.PublisherClient()

  def message(self, record) -> tuple[bytes, str]:
    """(payload, trigger_id attribute) of a record."""
    return orjson.dumps(schemas.to_json_message(self._record, record)), record['trigger_id']

  def start_bundle(self):
    self._futures = []

  def process(self, record):
    payload, trigger_id = self.message(record)
    self._futures.append(self._publisher.publish(self._topic, payload, trigger_id=trigger_id))

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


class _PublishChangeFn(_PublishFn):
  """An audience change as Segment's `Audience Entered` / `Audience Exited` track event, its
  messageId as the trigger_id attribute (transforms/rules/audiences/membership.py)."""

  def message(self, record) -> tuple[bytes, str]:
    event = membership.segment_event(record)
    return orjson.dumps(event), event['messageId']


class PublishAudienceChanges(beam.PTransform):
  """Publishes `audience_membership` records to `topic` as Segment audience events, which the
  trigger worker delivers as signed webhooks like cart triggers. Input: records. Output:
  nothing."""

  def __init__(self, topic: TriggersTopic):
    super().__init__()
    self._topic = topic.path

  def expand(self, pcoll):
    return pcoll | 'Publish' >> beam.ParDo(_PublishChangeFn(
        self._topic, 'audience_membership', metrics.AUDIENCE_CHANGES_PUBLISHED))
