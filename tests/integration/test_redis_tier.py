"""The Redis serving tier against real components: the Firestore writer puts version-checked
entries into the session stack's Redis after each commit, the connector serves them byte for byte
as it serves Firestore, and falls back to Firestore behind a circuit breaker when Redis fails."""
import contextlib
import datetime as dt
import os
import socket
import subprocess
import time

import apache_beam as beam
import pytest
import redis
from google.cloud import firestore

from connector.config import RedisSettings, Settings
from tests.integration.helpers import wait_for
from tests.integration.test_connector_api import KEY, document, get, serving
from tests.unit.beam_helpers import batch_pipeline
from transforms.rules import served
from transforms.settings import FirestoreLocation, RedisTier
from transforms.sinks.firestore import WriteDocuments
from transforms.sinks.redis_tier import RedisUnavailable, RedisWriter

PROJECT = 'demo-local'
IDS = ('c1', 'c2', 'c3')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _doc(customer_id, segment='prospect'):
  doc = document(customer_id)
  doc.pop('updated_at')
  return {**doc, 'segment': segment, 'holdout': False, 'traits': {}, 'audiences': []}


def _write(collection, pairs, tier):
  with batch_pipeline() as p:
    _ = p | beam.Create(pairs) | WriteDocuments(FirestoreLocation(PROJECT, collection),
                                                redis=tier)


def _entries(client, prefix):
  return {key.decode()[len(prefix):]: client.hgetall(key)
          for key in client.scan_iter(match=prefix + '*')}


@pytest.fixture
def tier(local_stack, unique_name):
  """A key prefix of this test's own in the session Redis."""
  return RedisTier(os.environ['REDIS_URL'], f'{unique_name}:', retry_seconds=2)


def test_entries_follow_firestore_versions_and_serve_the_same_bytes(tier, unique_name):
  client = redis.Redis.from_url(tier.url)
  _write(unique_name, [(i, _doc(i)) for i in IDS], tier)
  stored = {d.id: d.to_dict() for d in firestore.Client(project=PROJECT)
            .collection(unique_name).stream()}
  entries = _entries(client, tier.prefix)
  assert set(entries) == set(IDS)
  for customer_id in IDS:
    assert int(entries[customer_id][b'v']) == stored[customer_id]['version']
    assert entries[customer_id][b'last_event_at'] == b'2026-11-14T23:58:36.407000Z'

  firestore_only = Settings(project=PROJECT, collection=unique_name, api_keys=(KEY,),
                            cache_ttl_seconds=0, port=_free_port())
  with_redis = Settings(project=PROJECT, collection=unique_name, api_keys=(KEY,),
                        cache_ttl_seconds=0, port=_free_port(),
                        redis=RedisSettings(tier.url, tier.prefix))
  with serving(firestore_only, timeout=10) as plain, serving(with_redis, timeout=10) as fast:
    for params in ({}, {'fields': 'cart,segment'}, {'limit_recommendations': 1}):
      for customer_id in (*IDS, 'nobody'):
        path = f'/v1/customers/{customer_id}/personalization'
        a, b = get(plain, path, params=params), get(fast, path, params=params)
        assert (a.status_code, a.content, a.headers.get('etag')) == (
            b.status_code, b.content, b.headers.get('etag')), (customer_id, params)
    reply = get(fast, '/v1/customers/c1/personalization')
    assert reply.content == entries['c1'][b'body']
    assert reply.headers['etag'] == entries['c1'][b'etag'].decode()
    batch = [c.post('/v1/personalization:batchGet', json={'customer_ids': [*IDS, 'nobody']},
                    headers={'Authorization': f'Bearer {KEY}'}) for c in (plain, fast)]
    assert batch[0].content == batch[1].content and batch[1].status_code == 200
    metrics = get(fast, '/metrics').text
    # 3 ids x 3 parameter sets + the plain lookup + the batch's 3 are hits; "nobody" misses.
    assert 'connector_redis_lookups_total{result="hit"} 13.0' in metrics
    assert 'connector_redis_lookups_total{result="miss"} 4.0' in metrics
    assert 'connector_document_age_seconds_count' in metrics
    assert get(fast, '/readyz').json() == {'status': 'ready', 'redis': 'ok',
                                           'redis_breaker': 'closed'}

    # A newer write replaces the entry; a delete leaves a tombstone the connector answers 404.
    _write(unique_name, [('c1', _doc('c1', 'vip')), ('c2', None)], tier)
    assert get(fast, '/v1/customers/c1/personalization').json()['segment'] == 'vip'
    assert get(fast, '/v1/customers/c2/personalization').status_code == 404
    assert client.hgetall(tier.prefix + 'c2')[b'deleted'] == b'1'
    assert 0 < client.ttl(tier.prefix + 'c2') <= served.TOMBSTONE_SECONDS


def test_an_older_version_never_replaces_a_newer_one(tier):
  writer = RedisWriter(tier)
  newer = served.entry(_doc('c1', 'vip'), 200)
  assert writer.put({'c1': newer}) == (1, 0)
  assert writer.put({'c1': served.entry(_doc('c1', 'prospect'), 100)}) == (0, 1)
  assert writer.put({'c1': served.entry(None, 150)}) == (0, 1)  # a late delete loses too
  assert writer.put({'c1': newer}) == (0, 1)  # the same version again: nothing to do
  client = redis.Redis.from_url(tier.url)
  assert client.hget(tier.prefix + 'c1', 'body') == newer.body
  assert writer.delete(['c1', 'never-there']) == 1
  assert not client.exists(tier.prefix + 'c1')
  writer.close()


def test_a_failed_redis_fails_the_write_and_the_retry_catches_up(tier, unique_name):
  dead = RedisTier(f'redis://127.0.0.1:{_free_port()}/0', tier.prefix, retry_seconds=1)
  with pytest.raises(Exception, match='Redis') as raised:
    _write(unique_name, [(i, _doc(i)) for i in IDS], dead)
  assert 'RedisUnavailable' in repr(raised.value) or isinstance(raised.value, RedisUnavailable)
  # Firestore has the documents (committed first); Redis has nothing of them.
  stored = {d.id: d.to_dict()['version'] for d in firestore.Client(project=PROJECT)
            .collection(unique_name).stream()}
  assert set(stored) == set(IDS)
  client = redis.Redis.from_url(tier.url)
  assert _entries(client, tier.prefix) == {}
  # The retry (here: the same write again) finds the documents unchanged and puts their entries.
  _write(unique_name, [(i, _doc(i)) for i in IDS], tier)
  entries = _entries(client, tier.prefix)
  assert {i: int(e[b'v']) for i, e in entries.items()} == stored


@contextlib.contextmanager
def own_redis(port):
  """A Redis server of this test's own (it is stopped and started again, so not the session's)."""
  process = subprocess.Popen(['redis-server', '--bind', '127.0.0.1', '--port', str(port),
                              '--save', '', '--appendonly', 'no'],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    client = redis.Redis(port=port)
    wait_for(lambda: _pings(client), 10, 'own redis-server', every=0.05)
    yield client
  finally:
    process.terminate()
    process.wait(10)


def _pings(client):
  try:
    return client.ping()
  except redis.ConnectionError:
    return False


def test_connector_falls_back_to_firestore_and_the_breaker_recovers(local_stack, unique_name):
  port = _free_port()
  tier = RedisTier(f'redis://127.0.0.1:{port}/0', 'fb:', retry_seconds=2)
  settings = Settings(project=PROJECT, collection=unique_name, api_keys=(KEY,),
                      cache_ttl_seconds=0, port=_free_port(),
                      redis=RedisSettings(tier.url, tier.prefix, timeout_seconds=0.2,
                                          breaker_failures=2, breaker_seconds=0.5))
  with own_redis(port):
    _write(unique_name, [('c1', _doc('c1'))], tier)
  # Redis is down: every lookup is still answered, from Firestore.
  with serving(settings, timeout=10) as client:
    for _ in range(4):
      assert get(client, '/v1/customers/c1/personalization').status_code == 200
    metrics = get(client, '/metrics').text
    assert 'connector_redis_lookups_total{result="error"} 2.0' in metrics
    assert 'connector_redis_lookups_total{result="breaker_open"} 2.0' in metrics
    assert 'connector_redis_breaker_open 1.0' in metrics
    assert get(client, '/readyz').json()['redis_breaker'] == 'open'
    with own_redis(port):  # back, empty: the breaker closes and misses go to Firestore
      time.sleep(0.6)  # the breaker's open interval (0.5 s) passes
      assert get(client, '/v1/customers/c1/personalization').status_code == 200
      metrics = get(client, '/metrics').text
      assert 'connector_redis_lookups_total{result="miss"} 1.0' in metrics
      assert 'connector_redis_breaker_open 0.0' in metrics
