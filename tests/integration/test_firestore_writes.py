"""The Firestore writer against the emulator: monotonic (never back to an older state), deletes on
withdrawn consent, batches over 500, and what it reports as written."""
import datetime as dt

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to
from google.cloud import firestore

from tests.unit.beam_helpers import batch_pipeline
from transforms import reference_data
from transforms.settings import FirestoreLocation
from transforms.sinks.firestore import WriteDocuments

PROJECT = 'demo-local'
T1 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
T2 = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)


def location(collection):
  return FirestoreLocation(PROJECT, collection)


def stored(collection):
  return {d.id: d.to_dict() for d in firestore.Client(project=PROJECT)
          .collection(collection).stream()}


def doc(segment, last_event_at):
  return {'customer_id': 'x', 'segment': segment, 'last_event_at': last_event_at}


def test_writes_are_monotonic_and_consent_deletes(local_stack, unique_name):
  with batch_pipeline() as p:
    out = p | beam.Create([('c1', doc('active', T2)), ('c2', doc('vip', T1)),
                           ('c3', doc('prospect', T1))]) | WriteDocuments(location(unique_name))
    assert_that(out.written | beam.MapTuple(lambda doc_id, d, at: doc_id),
                equal_to(['c1', 'c2', 'c3']))
  # A replay of older state for c1, newer state for c2, and c3 withdrew consent.
  with batch_pipeline() as p:
    out = p | beam.Create([('c1', doc('prospect', T1)), ('c2', doc('at_risk', T2)),
                           ('c3', None), ('c4', None)]) | WriteDocuments(location(unique_name))
    assert_that(out.written | beam.MapTuple(lambda doc_id, d, at: doc_id), equal_to(['c2']))
  now = stored(unique_name)
  assert set(now) == {'c1', 'c2'}
  assert now['c1']['segment'] == 'active' and now['c1']['last_event_at'] == T2
  assert now['c2']['segment'] == 'at_risk'
  assert now['c2']['updated_at'] is not None


def test_more_than_one_commit_of_documents_and_invalid_ids_dead_lettered(local_stack, unique_name):
  pairs = [(f'c{i:04d}', doc('prospect', T1)) for i in range(1203)] + [('a/b', doc('vip', T1))]
  with batch_pipeline() as p:
    out = p | beam.Create(pairs) | WriteDocuments(location(unique_name))
    assert_that(out.written | beam.combiners.Count.Globally(), equal_to([1203]), label='Count')
    assert_that(out.dead_letter | beam.Map(lambda d: (d['failure_type'], d['step'])),
                equal_to([('invalid_document_id', 'WriteDocuments')]), label='Dead')
  assert len(stored(unique_name)) == 1203


def test_streaming_reference_data_reads_popularity_back(local_stack, unique_name, tmp_path):
  db = firestore.Client(project=PROJECT)
  for product_id, customers in (('p1', 1), ('p2', 7), ('p3', 3)):
    db.collection(unique_name).document(product_id).set({'customers': customers})
  catalog = tmp_path / 'catalog.csv'
  catalog.write_text('product_id,sku,name,category,brand,price,currency,in_stock,url,image_url\n'
                     'p1,S,A,Shoes,B,1,USD,true,u,i\np2,S,B,Shoes,B,1,USD,true,u,i\n'
                     'p3,S,C,Hats,B,1,USD,true,u,i\n')
  data = reference_data.load(None, str(catalog), location(unique_name))
  assert [r['product_id'] for r in data.recommender.recommend(['Shoes'], set())] == [
      'p2', 'p1', 'p3']


def _pull_all(subscriber, subscription, expect, seconds=20):
  """Pulls until `expect` messages arrived (or `seconds` passed); acks them."""
  import time
  got, deadline = [], time.monotonic() + seconds
  while len(got) < expect and time.monotonic() < deadline:
    reply = subscriber.pull(subscription=subscription, max_messages=100, timeout=2)
    if reply.received_messages:
      subscriber.acknowledge(subscription=subscription,
                             ack_ids=[r.ack_id for r in reply.received_messages])
    got += [r.message for r in reply.received_messages]
  return got


def test_each_write_publishes_its_change_and_a_rerun_writes_and_publishes_nothing(
    local_stack, unique_name):
  import orjson
  from google.cloud import pubsub_v1

  import schemas
  from transforms.settings import TriggersTopic
  from scripts import publish
  topic, subscription = publish.ensure_topic_and_subscription(PROJECT, unique_name, unique_name)
  subscriber = pubsub_v1.SubscriberClient()
  changes_topic = TriggersTopic(topic, 'profile_changes_topic')

  def profile(segment, at, audiences, ltv):
    return {'customer_id': 'x', 'segment': segment, 'last_event_at': at,
            'orders': {'count': 1, 'lifetime_value': ltv}, 'audiences': audiences}

  def write(pairs):
    with batch_pipeline() as p:
      out = p | beam.Create(pairs) | WriteDocuments(location(unique_name),
                                                    changes_topic=changes_topic)
      assert_that(out.changes | beam.Map(lambda c: c['customer_id']),
                  equal_to(sorted(c for c, d in pairs if c in expect_changed)), label='Changes')

  first = [('c1', profile('active', T1, ['vip'], 10.0)), ('c2', profile('vip', T1, [], 5.0))]
  expect_changed = {'c1', 'c2'}
  write(first)
  messages = _pull_all(subscriber, subscription, 2)
  bodies = {m.attributes['customer_id']: orjson.loads(m.data) for m in messages}
  assert set(bodies) == {'c1', 'c2'}
  for message in messages:
    body = schemas.profile_change_validator()(orjson.loads(message.data))
    assert message.attributes['change_id'] == body['change_id']
  assert bodies['c1']['changed'] == {'segment': 'active', 'last_event_at': T1.isoformat(),
                                     'orders.count': 1, 'orders.lifetime_value': 10.0}
  assert bodies['c1']['audiences'] == {'entered': ['vip'], 'exited': []}
  versions = {c: d['version'] for c, d in stored(unique_name).items()}
  assert versions == {c: bodies[c]['version'] for c in ('c1', 'c2')}

  # The same documents again (a re-run): nothing written, nothing published, versions kept.
  expect_changed = set()
  write(first)
  assert {c: d['version'] for c, d in stored(unique_name).items()} == versions

  # c1 leaves the audience and its lifetime value moves; c2 withdraws consent.
  expect_changed = {'c1', 'c2'}
  write([('c1', profile('active', T2, [], 12.5)), ('c2', None)])
  messages = _pull_all(subscriber, subscription, 2)
  bodies = {m.attributes['customer_id']: orjson.loads(m.data) for m in messages}
  assert bodies['c1']['changed'] == {'last_event_at': T2.isoformat(),
                                     'orders.lifetime_value': 12.5}
  assert bodies['c1']['audiences'] == {'entered': [], 'exited': ['vip']}
  assert bodies['c1']['version'] > versions['c1']
  assert stored(unique_name)['c1']['version'] == bodies['c1']['version']
  assert bodies['c2']['deleted'] is True and bodies['c2']['changed'] == {}
  assert bodies['c2']['version'] > versions['c2']
  # Nothing else: the re-run published nothing (the pipeline has finished: all it published is
  # in the subscription already).
  assert _pull_all(subscriber, subscription, 1, seconds=3) == []


def test_freshness_is_measured_per_write_and_the_publish_time_is_never_stored(
    local_stack, unique_name):
  from pipeline.summary import RunSummary
  from transforms import metrics
  from transforms.rules import serving
  now = dt.datetime.now(dt.timezone.utc)
  published = int((now - dt.timedelta(seconds=3)).timestamp() * 1_000_000)
  p = batch_pipeline()
  _ = p | beam.Create([('c1', {**doc('active', now - dt.timedelta(seconds=5)),
                               serving.PUBLISHED_AT: published}),
                       ('c2', doc('vip', now - dt.timedelta(hours=2)))]) | WriteDocuments(
                           location(unique_name))
  result = p.run()
  result.wait_until_finish()
  assert all(serving.PUBLISHED_AT not in d for d in stored(unique_name).values())
  summary = RunSummary.from_result(result)
  count, _, low, high = summary.distributions[metrics.DOCUMENT_EVENT_LAG_MS]
  assert count == 2 and 5_000 <= low < 60_000 and 7_200_000 <= high < 7_300_000
  count, _, low, high = summary.distributions[metrics.DOCUMENT_PUBLISH_LAG_MS]
  assert count == 1 and 3_000 <= low == high < 60_000
  text = summary.render()
  assert 'freshness: newest event time to commit' in text and 'over 2 writes' in text
  assert 'freshness: its Pub/Sub publish to commit' in text and 'max 2.0 h' in text
