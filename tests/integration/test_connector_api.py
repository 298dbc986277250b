"""The send-time API over real HTTP (uvicorn on a free loopback port) against the Firestore
emulator: shapes, auth, 404s, projection, caching and ETags, batchGet limits, health."""
import contextlib
import datetime as dt
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from google.cloud import firestore

from connector.app import create_app
from connector.config import Settings

PROJECT = 'demo-local'
KEY, OTHER_KEY = 'k-test-0123456789abcdef', 'k-rotated-0123456789abcd'
T = dt.datetime(2026, 11, 14, 23, 58, 36, 407000, tzinfo=dt.timezone.utc)


def document(customer_id, recommendations=4):
  return {
      'customer_id': customer_id, 'email_sha256': 'ab' * 32, 'first_name': 'Zoë',
      'country': 'SE', 'language': 'sv', 'loyalty_tier': 'gold', 'schema_version': 1,
      'updated_at': T, 'last_event_at': T,
      'recently_viewed': [{'product_id': 'p1', 'name': 'Boot', 'category': 'Shoes', 'price': 50.0,
                           'url': 'u', 'image_url': 'i', 'viewed_at': T}],
      'cart': {'items': [{'product_id': 'p2', 'name': 'Hat', 'price': 10.0, 'quantity': 2}],
               'item_count': 2, 'value': 20.0, 'currency': 'USD', 'updated_at': T,
               'abandoned': True},
      'orders': {'count': 0, 'lifetime_value': 0.0, 'last_order_id': None, 'last_order_at': None,
                 'currency': None},
      'segment': 'prospect', 'top_categories': ['Shoes'],
      'recommendations': [{'product_id': f'r{i}', 'name': 'R', 'price': 1.0, 'url': 'u',
                           'image_url': 'i', 'reason': 'popular now'}
                          for i in range(recommendations)],
      'engagement': {'last_email_open_at': T, 'last_email_click_at': None},
  }


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def api(local_stack):
  collection = f'conn{int(time.time() * 1000)}'
  db = firestore.Client(project=PROJECT)
  for customer_id in ('c1', 'c2', 'c3'):
    db.collection(collection).document(customer_id).set(document(customer_id))
  settings = Settings(project=PROJECT, collection=collection, api_keys=(KEY, OTHER_KEY),
                      cache_ttl_seconds=30, port=_free_port())
  with serving(settings, timeout=10) as client:
    yield client, db.collection(collection)


@contextlib.contextmanager
def serving(settings: Settings, timeout: float):
  """The connector app of `settings` on uvicorn in a thread, until the block ends: an httpx
  client on it once /healthz answers."""
  server = uvicorn.Server(uvicorn.Config(create_app(settings), host='127.0.0.1',
                                         port=settings.port, log_level='warning'))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  base = f'http://127.0.0.1:{settings.port}'
  deadline = time.monotonic() + 20
  while time.monotonic() < deadline:
    try:
      if httpx.get(base + '/healthz', timeout=1).status_code == 200:
        break
    except httpx.TransportError:
      time.sleep(0.1)
  try:
    with httpx.Client(base_url=base, timeout=timeout) as client:
      yield client
  finally:
    server.should_exit = True
    thread.join(timeout=10)


def get(client, path, key=KEY, **kwargs):
  headers = kwargs.pop('headers', {})
  if key is not None:
    headers.setdefault('Authorization', f'Bearer {key}')
  return client.get(path, headers=headers, **kwargs)


def test_personalization_returns_the_served_contract_with_iso_times(api):
  client, _ = api
  reply = get(client, '/v1/customers/c1/personalization')
  assert reply.status_code == 200
  body = reply.json()
  assert list(body) == ['customer_id', 'first_name', 'country', 'language', 'loyalty_tier',
                        'last_event_at', 'recently_viewed', 'cart', 'orders', 'segment',
                        'top_categories', 'recommendations', 'engagement', 'holdout', 'traits',
                        'audiences']
  assert body['first_name'] == 'Zoë' and body['last_event_at'] == '2026-11-14T23:58:36.407000Z'
  assert body['recently_viewed'][0]['viewed_at'] == '2026-11-14T23:58:36.407000Z'
  assert body['cart']['abandoned'] is True and body['engagement']['last_email_click_at'] is None
  assert 'email_sha256' not in body and 'updated_at' not in body and 'schema_version' not in body
  assert '@' not in reply.text


def test_projection_and_recommendation_limit(api):
  client, _ = api
  body = get(client, '/v1/customers/c1/personalization',
             params={'fields': 'cart,recommendations', 'limit_recommendations': 2}).json()
  assert list(body) == ['customer_id', 'cart', 'recommendations']
  assert len(body['recommendations']) == 2
  bad = get(client, '/v1/customers/c1/personalization', params={'fields': 'cart,email_sha256'})
  assert bad.status_code == 400 and 'email_sha256' in bad.json()['message']
  assert get(client, '/v1/customers/c1/personalization',
             params={'limit_recommendations': -1}).status_code == 422


def test_unknown_customer_is_a_small_404(api):
  client, _ = api
  reply = get(client, '/v1/customers/nobody/personalization')
  assert reply.status_code == 404 and reply.json() == {'error': 'not_found'}


def test_a_suppressed_customer_whose_document_was_deleted_is_404(api):
  client, collection = api
  collection.document('gone').set(document('gone'))
  # The pipeline deletes the document when consent is withdrawn; the cache must not outlive TTL
  # for a customer never read, so the first read after deletion is already 404.
  collection.document('gone').delete()
  assert get(client, '/v1/customers/gone/personalization').status_code == 404


@pytest.mark.parametrize('headers', [
    {}, {'Authorization': 'Bearer wrong-key-0123456789'}, {'X-API-Key': 'nope'},
    {'Authorization': 'Basic ' + KEY}, {'Authorization': 'Bearer'}])
def test_auth_failures_are_401_and_do_not_reveal_existence(api, headers):
  client, _ = api
  known = get(client, '/v1/customers/c1/personalization', key=None, headers=dict(headers))
  unknown = get(client, '/v1/customers/nobody/personalization', key=None, headers=dict(headers))
  assert known.status_code == unknown.status_code == 401
  assert known.content == unknown.content == b'{"error":"unauthorized"}'


def test_both_key_headers_and_rotated_keys_work(api):
  client, _ = api
  assert get(client, '/v1/customers/c1/personalization', key=None,
             headers={'X-API-Key': OTHER_KEY}).status_code == 200
  assert get(client, '/v1/customers/c1/personalization', key=OTHER_KEY).status_code == 200


def test_etag_cache_control_and_304(api):
  client, collection = api
  first = get(client, '/v1/customers/c2/personalization')
  etag = first.headers['etag']
  assert first.headers['cache-control'] == 'private, max-age=30'
  again = get(client, '/v1/customers/c2/personalization', headers={'If-None-Match': etag})
  assert again.status_code == 304 and again.content == b'' and again.headers['etag'] == etag
  # Served from the in-process cache within the TTL: a change in Firestore is not seen yet.
  collection.document('c2').update({'segment': 'vip'})
  assert get(client, '/v1/customers/c2/personalization').json()['segment'] == 'prospect'
  projected = get(client, '/v1/customers/c2/personalization', params={'fields': 'segment'})
  assert projected.headers['etag'] != etag


def test_batch_get_and_its_limits(api):
  client, _ = api
  headers = {'Authorization': f'Bearer {KEY}'}
  reply = client.post('/v1/personalization:batchGet', headers=headers,
                      json={'customer_ids': ['c1', 'c3', 'nobody', 'c1']})
  assert reply.status_code == 200
  body = reply.json()
  assert sorted(body['customers']) == ['c1', 'c3'] and body['not_found'] == ['nobody']
  assert body['customers']['c3']['customer_id'] == 'c3'
  too_many = client.post('/v1/personalization:batchGet', headers=headers,
                         json={'customer_ids': [f'x{i}' for i in range(101)]})
  assert too_many.status_code == 400
  assert client.post('/v1/personalization:batchGet', headers=headers,
                     json={'customer_ids': []}).status_code == 400
  assert client.post('/v1/personalization:batchGet', headers=headers,
                     content=b'{not json').status_code == 400
  assert client.post('/v1/personalization:batchGet', headers=headers,
                     content=b'{"customer_ids": ["' + b'a' * 70_000 + b'"]}').status_code == 413
  assert client.post('/v1/personalization:batchGet',
                     json={'customer_ids': ['c1']}).status_code == 401


@pytest.mark.parametrize('path', [
    '/v1/customers/..%2Fc1/personalization', '/v1/customers/%2e%2e/personalization',
    '/v1/customers/' + 'a' * 300 + '/personalization', '/v1/customers/c1%0d%0aX:1/personalization',
    '/v1/customers/c1/personalization/../../../etc/passwd'])
def test_malicious_paths_get_4xx_never_500_or_data(api, path):
  client, _ = api
  reply = get(client, path)
  assert 400 <= reply.status_code < 500
  assert 'recently_viewed' not in reply.text


def test_health_readiness_and_metrics(api):
  client, _ = api
  assert client.get('/healthz').json() == {'status': 'ok'}
  assert client.get('/readyz').json() == {'status': 'ready'}
  assert client.get('/metrics').status_code == 401  # only health answers without a key
  metrics = client.get('/metrics', headers={'Authorization': f'Bearer {KEY}'}).text
  assert 'connector_requests_total{endpoint="/v1/customers/{customer_id}/personalization"' in metrics
  assert 'connector_request_seconds_bucket' in metrics
  assert 'connector_cache_lookups_total{result="hit"}' in metrics
