"""The streaming pipeline against the emulators: Pub/Sub in, BigQuery and Firestore out, on the
BundleBasedDirectRunner, stopped cleanly."""
import collections
import time

import orjson
from google.cloud import firestore

from pipeline import run
from scripts import publish
from tests.integration.helpers import stop_streaming, wait_for
from transforms.sinks import bigquery_client

PROJECT = 'demo-local'


def _event(i, user, minutes_ago=0, **extra):
  now = time.time() - minutes_ago * 60
  stamp = time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(now)) + '.000Z'
  return orjson.dumps({'type': 'track', 'event': 'Product Viewed', 'messageId': f'live-{i}',
                       'userId': user, 'timestamp': stamp,
                       'properties': {'product_id': f'p{i % 15}', 'price': 9.5}, **extra})


def _call(i, kind, user, **fields):
  """A screen or group call, as the collector forwards them."""
  stamp = time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime()) + '.000Z'
  return orjson.dumps({'type': kind, 'messageId': f'live-{i}', 'userId': user,
                       'timestamp': stamp, **fields})


def _count(bq, table):
  return list(bq.query(f'SELECT COUNT(*) AS n FROM `{table}`').result())[0]['n']


def test_streaming_from_pubsub_to_bigquery_and_firestore(local_stack, unique_name, tmp_path):
  topic, subscription = publish.ensure_topic_and_subscription(
      PROJECT, f'{unique_name}-events', f'{unique_name}-pipeline')
  # A file read in the same graph (a backfill): one new event, and one copy of a live event.
  backfill = tmp_path / 'backfill.ndjson'
  backfill.write_bytes(_event(100, 'c9') + b'\n' + _event(0, 'c0') + b'\n')
  result, _ = run.launch([
      '--streaming', f'--subscription={subscription}', f'--project={PROJECT}',
      '--runner=BundleBasedDirectRunner', f'--dataset={unique_name}',
      f'--collection={unique_name}', f'--events={backfill}',
      f'--popularity_collection={unique_name}-popularity'])
  try:
    good = [_event(i, f'c{i % 3}') for i in range(30)]
    messages = good + good[:5] + [b'{"type": "track", "messageId": "bad-1"', b'not json']
    publish.publish(iter(messages), topic, rate=200, keep_times=True,
                    attributes={'origin': 'test'})
    # The collector's calls: tagged with the write key's source; a bad source name costs the
    # event nothing but the name.
    publish.publish(iter([_call(200, 'screen', 'c0', name='Home')]), topic, rate=200,
                    keep_times=True, attributes={'source': 'app'})
    publish.publish(iter([_call(201, 'group', 'c1', groupId='acct-1')]), topic, rate=200,
                    keep_times=True, attributes={'source': 'not a name!'})
    bq = bigquery_client.cloud_client(PROJECT)
    events_table = f'{PROJECT}.{unique_name}.events'
    wait_for(lambda: _count(bq, events_table) >= 33, 120, '33 events in BigQuery')
    wait_for(lambda: _count(bq, f'{PROJECT}.{unique_name}.dead_letter') >= 2, 60,
              'two dead letters')
    db = firestore.Client(project=PROJECT)

    def complete_documents():
      # Each customer viewed 5 distinct products (c9 one): recently_viewed shows them all.
      docs = [d.to_dict() for d in db.collection(unique_name).stream()]
      viewed = sorted(len(d['recently_viewed']) for d in docs)
      return docs if viewed == [1, 5, 5, 5] else None

    docs = wait_for(complete_documents, 60, 'four documents with 5, 5, 5 and 1 viewed products')
    time.sleep(3)  # give duplicates a chance to (wrongly) arrive
    ids = [r['message_id'] for r in bq.query(
        f'SELECT message_id FROM `{events_table}`').result()]
    # Duplicates dropped, across Pub/Sub redeliveries and between the file and the stream.
    assert sorted(ids) == sorted([f'live-{i}' for i in range(30)]
                                 + ['live-100', 'live-200', 'live-201'])
    sources = collections.Counter(
        r['source'] for r in bq.query(f'SELECT source FROM `{events_table}`').result())
    assert sources[f'file:{backfill}'] in (1, 2) and sources['pubsub'] == 32 - sources[
        f'file:{backfill}']
    assert sources['pubsub:app'] == 1 and len(sources) == 3
    calls = {r['message_id']: (r['type'], r['event'], r['group_id'], r['source']) for r in bq.query(
        f'SELECT message_id, type, event, group_id, source FROM `{events_table}` '
        f"WHERE message_id IN ('live-200', 'live-201')").result()}
    assert calls == {'live-200': ('screen', 'Home', None, 'pubsub:app'),
                     'live-201': ('group', None, 'acct-1', 'pubsub')}
    dead = [dict(r) for r in bq.query(
        f'SELECT failure_type, source, attributes FROM `{PROJECT}.{unique_name}.dead_letter`')
            .result()]
    assert sorted(d['failure_type'] for d in dead) == ['invalid_json', 'invalid_json']
    assert all(d['source'] == 'pubsub' and d['attributes'] == {'origin': 'test'} for d in dead)
    assert len(docs) == 4
    # Product popularity kept by the streaming job: each product viewed by one customer, except
    # p10 (c1 live and c9 from the backfill file).

    def popularity():
      counts = {d.id: d.to_dict()['customers']
                for d in db.collection(f'{unique_name}-popularity').stream()}
      return counts if len(counts) == 15 and counts.get('p10') == 2 else None

    counts = wait_for(popularity, 60, 'popularity of 15 products')
    assert counts == {f'p{k}': 2 if k == 10 else 1 for k in range(15)}
  finally:
    stop_streaming(result, topic)
  assert str(result.state).endswith('CANCELLED')
