"""Tracking URLs, holdout and exposures over real HTTP (uvicorn on a free loopback port) against
the Firestore and Pub/Sub emulators: the tokens verify and say whose send and which link, a
held-out customer's exposure reaches the events topic once per campaign (found or not), a
treatment customer's never, and Pub/Sub trouble is a 503, never a 200."""
import contextlib
import datetime as dt
import hashlib
import itertools
import socket
import threading
import time
import uuid

import httpx
import orjson
import pytest
import uvicorn
from google.api_core import exceptions
from google.cloud import firestore, pubsub_v1

from connector.app import create_app
from connector.config import Settings
from connector.exposures import Exposures
from tests.integration.helpers import paused, wait_for
from transforms.rules.holdout import Holdout
from transforms.rules.tracking import TokenKeys

PROJECT = 'demo-local'
KEY = 'k-engagement-0123456789abcdef'
AUTH = {'Authorization': f'Bearer {KEY}'}
TRACKING_KEYS = f'k2:{"a" * 32},k1:{"b" * 32}'
BASE_URL = 'https://t.example.com'
HOLDOUT = Holdout(10)
# A pull that finds nothing for this long means the subscription holds nothing more: exposures
# are confirmed by Pub/Sub before the API answers, so none is still on its way by then.
QUIET_SECONDS = 2
T = dt.datetime(2026, 11, 14, 23, 58, 36, tzinfo=dt.timezone.utc)


def first(prefix, held):
  return next(f'{prefix}{n}' for n in itertools.count() if HOLDOUT.held_out(f'{prefix}{n}') == held)


HELD, HELD_2, TREATED = first('held-', True), first('held-b', True), first('treat-', False)


def document(customer_id, **extra):
  return {
      'customer_id': customer_id, 'first_name': 'Zoë', 'schema_version': 1, 'updated_at': T,
      'last_event_at': T, 'segment': 'prospect', 'top_categories': ['Shoes'],
      'recently_viewed': [{'product_id': 'p1', 'name': 'Boot', 'url': 'https://shop.example/p1',
                           'viewed_at': T}],
      'recommendations': [
          {'product_id': 'r1', 'name': 'A', 'url': 'https://shop.example/r1?utm=x'},
          {'product_id': 'r2', 'name': 'B', 'url': None},
          {'product_id': 'r3', 'name': 'C', 'url': 'javascript:alert(1)'}],
      'cart': {'items': [], 'item_count': 0}, **extra}


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def serve(settings, **app_kwargs):
  """The connector app on its own uvicorn server; yields an HTTP client to it."""
  server = uvicorn.Server(uvicorn.Config(create_app(settings, **app_kwargs), host='127.0.0.1',
                                         port=settings.port, log_level='warning'))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  base = f'http://127.0.0.1:{settings.port}'

  def up():
    try:
      return httpx.get(base + '/healthz', timeout=1).status_code == 200
    except httpx.TransportError:
      return False
  try:
    wait_for(up, 20, 'the connector to listen')
    with httpx.Client(base_url=base, timeout=30, headers=AUTH) as client:
      yield client
  finally:
    server.should_exit = True
    thread.join(timeout=10)


def settings_for(collection, **kwargs):
  return Settings(project=PROJECT, collection=collection, api_keys=(KEY,), port=_free_port(),
                  **kwargs)


@pytest.fixture(scope='module')
def stack(local_stack):
  """A customers collection, an events topic, and the connector with tracking and a 10% holdout."""
  name = f'eng{uuid.uuid4().hex[:8]}'
  db = firestore.Client(project=PROJECT)
  for customer_id in (HELD, HELD_2, TREATED):
    db.collection(name).document(customer_id).set(document(customer_id, holdout=HOLDOUT.held_out(
        customer_id)))
  db.collection(name).document('says-held').set(document('says-held', holdout=True))
  publisher = pubsub_v1.PublisherClient()
  topic = publisher.topic_path(PROJECT, name)
  publisher.create_topic(name=topic)
  settings = settings_for(name, tracking_keys=TokenKeys.parse(TRACKING_KEYS),
                          tracking_base_url=BASE_URL + '/', tracking_ttl_days=7, holdout=HOLDOUT,
                          events_topic=topic, exposures_collection=f'{name}_exposures')
  with serve(settings) as client:
    yield {'client': client, 'topic': topic, 'db': db, 'settings': settings, 'name': name}


@pytest.fixture
def subscription(stack):
  """A fresh subscription on the events topic: it sees what the test publishes from now on."""
  subscriber = pubsub_v1.SubscriberClient()
  path = subscriber.subscription_path(PROJECT, f's{uuid.uuid4().hex[:10]}')
  subscriber.create_subscription(name=path, topic=stack['topic'])
  yield lambda: drain(subscriber, path)
  subscriber.delete_subscription(subscription=path)
  subscriber.close()


def drain(subscriber, path):
  """Every message on the subscription (acknowledged), as (event, attributes): pulls until a
  pull finds nothing within QUIET_SECONDS."""
  messages = []
  for _ in range(100):
    try:
      response = subscriber.pull(subscription=path, max_messages=100, timeout=QUIET_SECONDS,
                                 retry=None)
    except exceptions.DeadlineExceeded:
      return messages
    if not response.received_messages:
      return messages
    subscriber.acknowledge(subscription=path,
                           ack_ids=[m.ack_id for m in response.received_messages])
    messages += [(orjson.loads(m.message.data), dict(m.message.attributes))
                 for m in response.received_messages]
  pytest.fail('the subscription never ran dry')


def personalization(client, customer_id, **params):
  return client.get(f'/v1/customers/{customer_id}/personalization', params=params)


def token(url, prefix, suffix=''):
  assert url.startswith(prefix) and url.endswith(suffix), url
  return url[len(prefix):len(url) - len(suffix)]


def test_tracking_urls_carry_verifiable_tokens_for_the_customer_send_and_link(stack):
  started = int(time.time())
  reply = personalization(stack['client'], TREATED, campaign_id='spring', email_id='e-7')
  assert reply.status_code == 200
  body = reply.json()
  assert body['holdout'] is False
  keys = TokenKeys.parse(TRACKING_KEYS)
  now = time.time()
  pixel = keys.verify(token(body['tracking']['open_pixel'], BASE_URL + '/v1/o/', '.gif'), now)
  assert (pixel.customer_id, pixel.campaign_id, pixel.email_id, pixel.url) == (
      TREATED, 'spring', 'e-7', None)
  assert started <= pixel.issued_at <= now
  assert pixel.expires_at == pixel.issued_at + 7 * 86_400
  links = [keys.verify(token(item['click_url'], BASE_URL + '/v1/c/'), now)
           for item in body['recommendations'][:1] + body['recently_viewed']]
  assert [(k.customer_id, k.campaign_id, k.email_id, k.url) for k in links] == [
      (TREATED, 'spring', 'e-7', 'https://shop.example/r1?utm=x'),
      (TREATED, 'spring', 'e-7', 'https://shop.example/p1')]
  # No link the collector could not redirect to: a missing or unsafe url gets no click_url.
  assert [item['click_url'] for item in body['recommendations'][1:]] == [None, None]
  assert body['recommendations'][0]['url'] == 'https://shop.example/r1?utm=x'


def test_without_a_send_there_are_no_tracking_urls_but_holdout_is_said(stack):
  body = personalization(stack['client'], HELD).json()
  assert body['holdout'] is True and 'tracking' not in body
  assert all('click_url' not in item for item in body['recommendations'])
  # Without a send holdout is a served field like any other; for a send it is always said.
  assert list(personalization(stack['client'], HELD, fields='segment').json()) == [
      'customer_id', 'segment']
  assert personalization(stack['client'], 'nobody').json() == {'error': 'not_found'}
  projected = personalization(stack['client'], TREATED, fields='segment', campaign_id='c',
                              email_id='e').json()
  assert list(projected) == ['customer_id', 'segment', 'holdout', 'tracking']


@pytest.mark.parametrize('params', [
    {'campaign_id': 'c'}, {'email_id': 'e'}, {'campaign_id': '', 'email_id': 'e'},
    {'campaign_id': 'c' * 257, 'email_id': 'e'}, {'campaign_id': 'c\x01', 'email_id': 'e'}])
def test_a_half_or_malformed_send_is_400(stack, params):
  reply = personalization(stack['client'], HELD, **params)
  assert reply.status_code == 400 and reply.json()['error'] == 'bad_request'
  batch = stack['client'].post('/v1/personalization:batchGet', params=params,
                               json={'customer_ids': [HELD]})
  assert batch.status_code == 400


def test_a_held_out_customer_is_exposed_once_per_campaign(stack, subscription):
  client = stack['client']
  for email_id in ('e-1', 'e-1', 'e-2'):
    reply = personalization(client, HELD, campaign_id='spring', email_id=email_id)
    assert reply.status_code == 200 and reply.json()['holdout'] is True
  messages = subscription()
  assert len(messages) == 1
  event, attributes = messages[0]
  digest = hashlib.sha256(orjson.dumps(['spring', HELD])).hexdigest()
  assert attributes == {'source': 'connector'}
  assert {k: v for k, v in event.items() if k != 'timestamp'} == {
      'type': 'track', 'event': 'Email Held Out', 'userId': HELD,
      'messageId': 'held-out-' + digest[:40],
      'properties': {'campaign_id': 'spring', 'email_id': 'e-1'}}
  assert event['timestamp'].endswith('Z')
  marker = stack['db'].collection(stack['settings'].exposures_collection).document(digest).get()
  assert marker.exists and marker.get('campaign_id') == 'spring'
  # A second campaign is a second exposure; a treatment customer is never one.
  assert personalization(client, HELD, campaign_id='summer', email_id='e-9').status_code == 200
  assert personalization(client, TREATED, campaign_id='summer', email_id='e-9').status_code == 200
  assert [(e['userId'], e['properties']['campaign_id']) for e, _ in subscription()] == [
      (HELD, 'summer')]


def test_a_second_connector_process_reads_the_marker_instead_of_publishing(stack, subscription):
  assert personalization(stack['client'], HELD_2, campaign_id='autumn',
                         email_id='e').status_code == 200
  assert len(subscription()) == 1
  fresh = settings_for(stack['name'], holdout=HOLDOUT, events_topic=stack['topic'],
                       exposures_collection=stack['settings'].exposures_collection)
  with serve(fresh) as other:  # its own process-local cache is empty
    assert personalization(other, HELD_2, campaign_id='autumn', email_id='e').status_code == 200
    assert 'connector_exposures_total{result="known"} 1.0' in other.get('/metrics').text
  assert subscription() == []


def test_a_held_out_unknown_customer_is_404_with_holdout_and_one_exposure(stack, subscription):
  unknown = first('nobody-', True)
  for _ in range(2):
    reply = personalization(stack['client'], unknown, campaign_id='spring', email_id='e-1')
    assert reply.status_code == 404
    assert reply.json() == {'error': 'not_found', 'holdout': True}
  treated_unknown = first('nobody-', False)
  reply = personalization(stack['client'], treated_unknown, campaign_id='spring', email_id='e-1')
  assert reply.json() == {'error': 'not_found', 'holdout': False}
  assert [e['userId'] for e, _ in subscription()] == [unknown]


def test_batch_get_gives_holdout_tracking_and_exposures_per_customer(stack, subscription):
  unknown = first('nobody-batch-', True)
  reply = stack['client'].post('/v1/personalization:batchGet',
                               params={'campaign_id': 'winter', 'email_id': 'e-3'},
                               json={'customer_ids': [HELD, TREATED, unknown]})
  assert reply.status_code == 200
  body = reply.json()
  assert body['holdout'] == {HELD: True, TREATED: False, unknown: True}
  assert body['not_found'] == [unknown] and sorted(body['customers']) == sorted([HELD, TREATED])
  keys = TokenKeys.parse(TRACKING_KEYS)
  for customer_id, shaped in body['customers'].items():
    assert shaped['holdout'] is HOLDOUT.held_out(customer_id)
    link = keys.verify(token(shaped['recommendations'][0]['click_url'], BASE_URL + '/v1/c/'),
                       time.time())
    assert (link.customer_id, link.campaign_id, link.email_id) == (customer_id, 'winter', 'e-3')
    assert shaped['tracking']['open_pixel'].startswith(BASE_URL + '/v1/o/')
  assert sorted(e['userId'] for e, _ in subscription()) == sorted([HELD, unknown])
  plain = stack['client'].post('/v1/personalization:batchGet',
                               json={'customer_ids': [HELD, unknown]}).json()
  assert 'tracking' not in plain['customers'][HELD] and 'holdout' not in plain
  assert subscription() == []  # no send named, no exposure


def test_a_document_whose_holdout_differs_is_counted(stack):
  assert not HOLDOUT.held_out('says-held')
  body = personalization(stack['client'], 'says-held').json()
  assert body['holdout'] is False  # the connector's own verdict is served
  assert 'connector_holdout_mismatch_total 1.0' in stack['client'].get('/metrics').text


def test_without_tracking_keys_a_send_still_works_without_urls(stack):
  with serve(settings_for(stack['name'])) as client:
    body = personalization(client, HELD, campaign_id='spring', email_id='e-1').json()
    assert body['tracking'] is None and body['holdout'] is False  # holdout off here
    assert all('click_url' not in item for item in body['recommendations'])


def test_a_topic_that_does_not_exist_is_503_not_200(stack):
  missing = pubsub_v1.PublisherClient.topic_path(PROJECT, f'missing{uuid.uuid4().hex[:8]}')
  broken = settings_for(stack['name'], holdout=HOLDOUT, events_topic=missing,
                        exposures_collection=f'{stack["name"]}_broken')
  with serve(broken) as client:
    for customer_id in (HELD, first('nobody-', True)):
      reply = personalization(client, customer_id, campaign_id='spring', email_id='e-1')
      assert reply.status_code == 503 and reply.headers['retry-after'] == '1'
    batch = client.post('/v1/personalization:batchGet', params={
        'campaign_id': 'spring', 'email_id': 'e-1'}, json={'customer_ids': [TREATED, HELD]})
    assert batch.status_code == 503
    # Nothing to record: a treatment customer, or no send named.
    assert personalization(client, TREATED, campaign_id='spring',
                           email_id='e-1').status_code == 200
    assert personalization(client, HELD).status_code == 200
    assert 'connector_exposures_total{result="failed"} 3.0' in client.get('/metrics').text
  markers = stack['db'].collection(f'{stack["name"]}_broken').limit(1).get()
  assert list(markers) == []  # no exposure claimed


def test_pubsub_paused_is_503_and_the_exposure_is_recorded_once_it_answers(
    stack, subscription, local_stack_dir):
  settings = settings_for(stack['name'], holdout=HOLDOUT, events_topic=stack['topic'],
                          exposures_collection=f'{stack["name"]}_paused')
  exposures = Exposures(PROJECT, settings.database, settings.exposures_collection,
                        settings.events_topic, timeout=1.0)
  with serve(settings, exposures=exposures) as client:
    assert personalization(client, HELD, campaign_id='paused', email_id='e').status_code == 200
    assert len(subscription()) == 1  # the publisher's channel is up before the pause
    with paused(local_stack_dir, 'pubsub'):
      reply = personalization(client, HELD, campaign_id='paused-2', email_id='e')
      assert reply.status_code == 503 and reply.headers['retry-after'] == '1'
    wait_for(lambda: personalization(client, HELD, campaign_id='paused-2',
                                     email_id='e').status_code == 200, 30, 'a 200 after resuming')
  # The unconfirmed publish may still have gone out: a duplicate by messageId, never a second id.
  ids = {e['messageId'] for e, _ in subscription()}
  assert ids == {'held-out-' + hashlib.sha256(orjson.dumps(['paused-2', HELD])).hexdigest()[:40]}


def test_the_holdout_share_every_verdict_and_every_exposure_match_the_pure_rule(stack):
  """10,000 ids (no documents) in batches of 100 for one send: the verdicts are the pure rule's,
  about 10% held out, and exactly the held-out ids are exposed, once each."""
  publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
  topic = publisher.topic_path(PROJECT, f'share{uuid.uuid4().hex[:8]}')
  publisher.create_topic(name=topic)
  path = subscriber.subscription_path(PROJECT, topic.rsplit('/', 1)[1])
  subscriber.create_subscription(name=path, topic=topic)
  settings = settings_for(stack['name'], holdout=HOLDOUT, events_topic=topic,
                          exposures_collection=f'{stack["name"]}_share')
  ids = [f'c{n:05d}' for n in range(10_000)]
  verdicts = {}
  with serve(settings) as client:
    for start in range(0, len(ids), 100):
      reply = client.post('/v1/personalization:batchGet', params={
          'campaign_id': 'share', 'email_id': 'e'}, json={'customer_ids': ids[start:start + 100]})
      assert reply.status_code == 200
      verdicts.update(reply.json()['holdout'])
  assert verdicts == {i: HOLDOUT.held_out(i) for i in ids}
  share = sum(verdicts.values()) / len(ids) * 100
  assert 9.5 <= share <= 10.5
  exposed = [event['userId'] for event, _ in drain(subscriber, path)]
  assert sorted(exposed) == sorted(i for i in ids if verdicts[i])
  subscriber.delete_subscription(subscription=path)
  publisher.delete_topic(topic=topic)
