"""The real tracking SDKs against the collector (`python -m collector`) and the Pub/Sub emulator.

Each client (segment-analytics-python, rudder-sdk-python, @segment/analytics-node), pointed at the
collector by its own host setting, sends track, identify and page calls. What each sent is read
off the wire as it left (the Python SDKs' requests session, the Node SDK's http_request event);
each event must then arrive in the subscription exactly once, as sent, with the client's
messageId, the batch's sentAt, the source of the key used and no write key. Whether the body
was gzipped is checked on both ends: the request's Content-Encoding and the collector's own
count of the bytes it received (`collector_request_bytes`, measured before decompression).
"""
import base64
import collections
import gzip
import json
import pathlib
import subprocess
import time
import uuid

import pytest
from google.cloud import firestore, pubsub_v1
from rudderstack.analytics import Client as RudderClient
from rudderstack.analytics import request as rudder_request
from segment.analytics import Client as SegmentClient
from segment.analytics import request as segment_request

from pipeline import run
from scripts import collect, localstack, publish
from scripts.demo_connector import free_port, wait_ready
from tests.integration.helpers import stop_streaming, wait_for
from transforms.rules.events import hash_email

PROJECT = 'demo-local'
REPO = pathlib.Path(__file__).resolve().parents[2]
# One key per client, so the `source` attribute says which one sent an event.
KEYS = {'wk_segment_python_t1': 'segment-python', 'wk_rudder_python_t1': 'rudder-python',
        'wk_segment_node_t1': 'segment-node'}
KEY_OF = {source: key for key, source in KEYS.items()}


class Collector:
  def __init__(self, base, topic, log):
    self.base, self.topic, self.log = base, topic, log

  def received_bytes(self):
    """(requests, body bytes as received) so far, from the collector's /metrics."""
    return (collect.metric(self.base, 'collector_request_bytes_count'),
            collect.metric(self.base, 'collector_request_bytes_sum'))

  def subscription(self):
    """A new subscription on the collector's topic: it sees only what is published from now."""
    return publish.ensure_topic_and_subscription(PROJECT, self.topic,
                                                 f'{self.topic}-{uuid.uuid4().hex[:6]}')[1]


@pytest.fixture(scope='module')
def collector(local_stack, tmp_path_factory):
  """`python -m collector` on a free port, publishing to a topic of its own; it must exit 0 on
  SIGTERM once the tests are done."""
  topic = f't{uuid.uuid4().hex[:10]}-events'
  publish.ensure_topic_and_subscription(PROJECT, topic)
  log = tmp_path_factory.mktemp('collector') / 'collector.log'
  port = free_port()
  process = collect.start_collector(log, PROJECT, topic, KEYS, port)
  base = f'http://127.0.0.1:{port}'
  try:
    assert wait_ready(base, process), '\n'.join(localstack.tail_lines(log, 30))
    yield Collector(base, topic, log)
  finally:
    code = collect.stop_collector(process)
  assert code == 0, '\n'.join(localstack.tail_lines(log, 30))


class Wire(list):
  """The requests the Python SDKs sent, in order; `on_response`, when set, is called with each
  response before the SDK sees it."""
  on_response = None


@pytest.fixture
def wire(monkeypatch):
  """What the Python SDKs send: each request as it went out (requests' PreparedRequest) with the
  answer it got. Both SDKs post through a module-level requests session; this wraps its post."""
  sent = Wire()
  for module in (segment_request, rudder_request):
    original = module._session.post

    def recording(url, *args, _original=original, **kwargs):
      response = _original(url, *args, **kwargs)
      sent.append({'url': response.request.url, 'headers': dict(response.request.headers),
                   'body': response.request.body, 'status': response.status_code,
                   'retry_after': response.headers.get('retry-after')})
      if sent.on_response:
        sent.on_response(response)
      return response

    monkeypatch.setattr(module._session, 'post', recording)
  return sent


def pull_exactly(subscription, count, timeout=30):
  """All messages of `subscription` once `count` have arrived, plus any already there beyond
  them (a duplicate would be: the collector answers 200 only once Pub/Sub accepted every event)."""
  received = []
  deadline = time.monotonic() + timeout
  with pubsub_v1.SubscriberClient() as subscriber:

    def pull(immediately):
      reply = subscriber.pull(subscription=subscription, max_messages=100, timeout=10,
                              return_immediately=immediately)
      if reply.received_messages:
        subscriber.acknowledge(subscription=subscription,
                               ack_ids=[r.ack_id for r in reply.received_messages])
      received.extend(r.message for r in reply.received_messages)
      return len(reply.received_messages)

    while len(received) < count and time.monotonic() < deadline:
      pull(immediately=False)
    while pull(immediately=True):
      pass
  return received


def _calls(prefix):
  """The calls each client makes: an identify, two E-commerce tracks and a page."""
  user = f'{prefix}-user'
  return [
      ('identify', {'user_id': user, 'traits': {'email': f'{prefix}@example.com',
                                                 'first_name': 'Ada'}}),
      ('track', {'user_id': user, 'event': 'Product Viewed',
                 'properties': {'product_id': 'p0001', 'price': 19.99, 'currency': 'USD'}}),
      ('track', {'anonymous_id': f'{prefix}-anon', 'event': 'Product Added',
                 'properties': {'product_id': 'p0002', 'price': 5.5, 'quantity': 2}}),
      ('page', {'user_id': user, 'name': 'Home', 'properties': {'url': 'https://shop.example/'}}),
  ]


def _camel(params):
  """The Python SDKs' keyword arguments -> the Node SDK's parameter object."""
  names = {'user_id': 'userId', 'anonymous_id': 'anonymousId'}
  return {names.get(k, k): v for k, v in params.items()}


def _batches(requests):
  """Request bodies -> the JSON each carried (gunzipped when its Content-Encoding says so)."""
  out = []
  for request in requests:
    body = request['body']
    body = body.encode() if isinstance(body, str) else body
    if request['headers'].get('Content-Encoding') == 'gzip':
      body = gzip.decompress(body)
    out.append(json.loads(body))
  return out


def check_delivery(messages, batches, source):
  """Each event the client sent arrived exactly once, as sent: the collector added only
  receivedAt, the batch's sentAt and context.ip (the client sent none), and dropped writeKey."""
  key = KEY_OF[source]
  sent = {event['messageId']: (event, batch) for batch in batches for event in batch['batch']}
  ids = collections.Counter(json.loads(m.data)['messageId'] for m in messages)
  assert ids == collections.Counter(set(sent)), f'expected each of {sorted(sent)} once'
  for message in messages:
    data = json.loads(message.data)
    event, batch = sent[data['messageId']]
    assert dict(message.attributes) == {'source': source, 'message_id': data['messageId'],
                                        'received_at': data['receivedAt']}
    assert key.encode() not in message.data and 'writeKey' not in data
    assert 'sentAt' not in event and data['sentAt'] == batch['sentAt']  # batch-level only
    assert data['context'].pop('ip') == '127.0.0.1'
    forwarded = {k: v for k, v in data.items() if k not in ('receivedAt', 'sentAt')}
    assert forwarded == event


def check_auth(request, key):
  """The write key went as HTTP Basic user (and, for Segment's SDKs, also in the body)."""
  assert request['headers']['Authorization'] == \
      'Basic ' + base64.b64encode(f'{key}:'.encode()).decode()


def _python_client(sdk, key, base, errors):
  on_error = lambda err, batch: errors.append(err)  # noqa: E731
  if sdk == 'segment-python':
    return SegmentClient(key, host=base, gzip=True, max_retries=1, on_error=on_error)
  # RudderStack's Python SDK gzips unless told not to.
  return RudderClient(key, host=base, max_retries=1, on_error=on_error)


def _send_python(client, calls):
  ids = []
  for method, params in calls:
    ok, message = getattr(client, method)(**params)
    assert ok
    ids.append(message['messageId'])
  client.flush()
  client.shutdown()
  return ids


@pytest.mark.parametrize('sdk', ['segment-python', 'rudder-python'])
def test_python_sdk_events_arrive_once_as_sent(collector, wire, sdk):
  subscription = collector.subscription()
  key = KEY_OF[sdk]
  before = collector.received_bytes()
  errors = []
  ids = _send_python(_python_client(sdk, key, collector.base, errors), _calls(sdk))
  assert not errors
  assert wire and all(r['status'] == 200 for r in wire), wire
  assert {r['url'] for r in wire} == {collector.base + '/v1/batch'}
  batches = _batches(wire)
  assert sorted(e['messageId'] for b in batches for e in b['batch']) == sorted(ids)
  for request, batch in zip(wire, batches):
    check_auth(request, key)
    assert request['headers']['Content-Encoding'] == 'gzip' and request['body'][:2] == b'\x1f\x8b'
    # Segment's SDK also puts the key in the body; the collector must not forward it.
    assert batch.get('writeKey') == (key if sdk == 'segment-python' else None)
  after = collector.received_bytes()
  compressed = sum(len(r['body']) for r in wire)
  assert after[0] - before[0] == len(wire)
  assert after[1] - before[1] == compressed  # the collector received the gzipped bodies...
  assert compressed < sum(len(json.dumps(b)) for b in batches)  # ...smaller than the JSON
  check_delivery(pull_exactly(subscription, len(ids)), batches, sdk)


def test_node_sdk_events_arrive_once_as_sent(collector):
  subscription = collector.subscription()
  key = KEY_OF['segment-node']
  calls = [{'type': method, 'params': _camel(params)} for method, params in _calls('node')]
  spec = {'writeKey': key, 'host': collector.base, 'flushAt': len(calls), 'calls': calls}
  before = collector.received_bytes()
  run = subprocess.run(['node', str(REPO / 'tests' / 'js' / 'send_events.js')],
                       input=json.dumps(spec), capture_output=True, text=True, timeout=60,
                       cwd=REPO)
  assert run.returncode == 0, run.stderr
  records = [json.loads(line) for line in run.stdout.splitlines()]
  requests = [r for r in records if r['kind'] == 'request']
  results = [r for r in records if r['kind'] == 'call']
  assert [r['status'] for r in records if r['kind'] == 'response'] == [200] * len(requests)
  assert len(results) == len(calls) and not any(r['error'] for r in results), results
  assert {r['url'] for r in requests} == {collector.base + '/v1/batch'}
  batches = _batches(requests)
  assert sorted(e['messageId'] for b in batches for e in b['batch']) == \
      sorted(r['messageId'] for r in results)
  for request, batch in zip(requests, batches):
    check_auth(request, key)
    assert 'Content-Encoding' not in request['headers']  # analytics-node does not compress
    assert batch['writeKey'] == key
  after = collector.received_bytes()
  assert after[0] - before[0] == len(requests)
  assert after[1] - before[1] == sum(len(r['body'].encode()) for r in requests)
  check_delivery(pull_exactly(subscription, len(calls)), batches, 'segment-node')


@pytest.mark.parametrize('sdk', ['segment-python', 'rudder-python'])
def test_python_sdk_retries_a_503_and_the_event_arrives_once(collector, wire, sdk):
  """Pub/Sub refusing an event (here: its topic deleted) makes the collector answer 503 with
  Retry-After, having published nothing; the SDK sends the same events again. The topic comes
  back (with a new subscription) while the SDK is still handling the 503, before any retry."""
  pubsub_v1.PublisherClient().delete_topic(
      topic=publish.topic_path(PROJECT, collector.topic))
  subscriptions = []

  def heal(response):
    if response.status_code == 503 and not subscriptions:
      subscriptions.append(collector.subscription())  # recreates the topic, then subscribes

  wire.on_response = heal
  errors = []
  ids = _send_python(_python_client(sdk, KEY_OF[sdk], collector.base, errors), _calls(sdk)[1:2])
  assert not errors
  assert [(r['status'], r['retry_after']) for r in wire] == [(503, '1'), (200, None)]
  first, retry = _batches(wire)
  assert [e['messageId'] for e in first['batch']] == [e['messageId'] for e in retry['batch']] \
      == ids
  check_delivery(pull_exactly(subscriptions[0], 1), [retry], sdk)


def test_segment_sdk_to_firestore(collector, unique_name):
  """The whole path: the Segment Python client's identify and E-commerce v2 calls, through the
  collector and the streaming pipeline (BundleBasedDirectRunner), reach the customer's Firestore
  document: hashed email, first name, viewed products and cart."""
  subscription = collector.subscription()
  result, _ = run.launch([
      '--streaming', f'--subscription={subscription}', f'--project={PROJECT}',
      '--runner=BundleBasedDirectRunner', f'--dataset={unique_name}',
      f'--collection={unique_name}', f'--popularity_collection={unique_name}-popularity',
      '--document_flush_seconds=0'])
  try:
    customer = f'{unique_name}-c1'
    client = SegmentClient(KEY_OF['segment-python'], host=collector.base, gzip=True)
    client.identify(customer, {'email': ' Ada.Lovelace@Example.com', 'first_name': 'Ada'})
    for product_id, name, price in (('p0001', 'Linen Shirt', 39.5), ('p0002', 'Wool Scarf', 20)):
      client.track(customer, 'Product Viewed', {
          'product_id': product_id, 'name': name, 'price': price, 'currency': 'USD',
          'category': 'Apparel'})
    client.track(customer, 'Product Added', {
        'cart_id': 'cart-1', 'product_id': 'p0001', 'name': 'Linen Shirt', 'price': 39.5,
        'quantity': 2, 'currency': 'USD'})
    client.shutdown()
    document = firestore.Client(project=PROJECT).collection(unique_name).document(customer)

    def complete():
      doc = document.get().to_dict()
      return doc if doc and doc['cart']['items'] and len(doc['recently_viewed']) == 2 else None

    doc = wait_for(complete, 90, f'{customer} with two viewed products and a cart')
  finally:
    stop_streaming(result, publish.topic_path(PROJECT, collector.topic))
  assert doc['customer_id'] == customer
  assert doc['email_sha256'] == hash_email('ada.lovelace@example.com')
  assert doc['first_name'] == 'Ada'
  assert sorted(v['product_id'] for v in doc['recently_viewed']) == ['p0001', 'p0002']
  assert doc['cart']['items'] == [{'product_id': 'p0001', 'name': 'Linen Shirt', 'price': 39.5,
                                   'quantity': 2}]
  assert doc['cart']['item_count'] == 2 and doc['cart']['value'] == 79.0
  assert doc['top_categories'] == ['Apparel']
