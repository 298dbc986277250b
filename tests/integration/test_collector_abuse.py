"""Abuse of the tracking collector: `python -m collector` as deployed (its JSON log in a file)
against the Pub/Sub emulator, with a subscription on its topic that shows what was published.

Every answer is under 500. Whatever is refused publishes nothing and whatever is accepted publishes
exactly its events, once: each test ends by sending a sentinel event through the collector and
pulling until it arrives, and what arrived before it must be exactly the test's accepted events.
The log never holds a write key, an email address or text from a payload. Requests no HTTP client
would send (a stalled or cut-off body, a Basic header with raw non-ASCII bytes) go over a raw
socket.
"""
import base64
import collections
import gzip
import os
import pathlib
import socket
import time
import uuid

import httpx
import orjson
import pytest
from google.api_core import exceptions
from google.cloud import pubsub_v1

from collector import events
from collector.app import PIXEL_GIF
from scripts import collect, localstack, publish
from scripts.demo_connector import free_port, wait_ready
from tests.unit.test_collector_events import gzip_of_zeros

PROJECT = 'demo-local'
KEY = f'wk_abuse_{uuid.uuid4().hex[:16]}'
SERVER_KEY = f'wk_abuse_srv_{uuid.uuid4().hex[:12]}'
ORIGIN = 'https://shop.example'
BODY_TIMEOUT = 1.0
# In every payload the tests send; none of it may reach the log.
EMAIL = f'abuse.{uuid.uuid4().hex[:8]}@example.com'
NOTE = f'payload-text-{uuid.uuid4().hex}'
# What the collector adds to an event (receivedAt, context.ip) has this shape; see padded().
STAMP = events.Stamp('2026-01-01T00:00:00.000Z', '127.0.0.1')


class Subscription:
  """A subscription on the collector's topic; every message pulled is acknowledged."""

  def __init__(self, path: str):
    self.path = path
    self.client = pubsub_v1.SubscriberClient()

  def pull_until(self, seen, seconds: float = 60) -> list[tuple[dict, dict]]:
    """(event, attributes) of the messages pulled until `seen(messages so far)` is true."""
    messages = []
    deadline = time.monotonic() + seconds
    while not seen(messages):
      assert time.monotonic() < deadline, f'{len(messages)} messages, the expected not among them'
      try:
        reply = self.client.pull(subscription=self.path, max_messages=1000, timeout=10)
      except exceptions.DeadlineExceeded:
        continue
      for received in reply.received_messages:
        messages.append((orjson.loads(received.message.data), dict(received.message.attributes)))
      ack_ids = [r.ack_id for r in reply.received_messages]
      for start in range(0, len(ack_ids), 500):
        self.client.acknowledge(subscription=self.path, ack_ids=ack_ids[start:start + 500])
    return messages

  def pull_ids(self, message_ids, seconds: float = 60) -> list[tuple[dict, dict]]:
    """Pulls until every one of `message_ids` has arrived."""
    wanted = set(message_ids)
    return self.pull_until(lambda got: wanted <= {a['message_id'] for _, a in got}, seconds)


class Served:
  def __init__(self, base, port, log, process, subscription):
    self.base, self.port, self.log, self.process = base, port, log, process
    self.subscription = subscription
    self.client = httpx.Client(base_url=base, timeout=30)

  def post(self, path, body: bytes | None = None, key: str | None = KEY, headers=None,
           **kwargs) -> httpx.Response:
    """A POST with `key` as Segment's libraries send it (Basic username, empty password)."""
    sent = {**(basic(key) if key else {}), **(headers or {})}
    reply = self.client.post(path, content=body, headers=sent, **kwargs)
    assert reply.status_code < 500, (reply.status_code, reply.text[:300])
    return reply

  def published(self) -> list[tuple[dict, dict]]:
    """What was published since the last call: a sentinel event goes through the collector, and
    the messages that arrived up to it (it excluded) are returned."""
    sentinel = f'sentinel-{uuid.uuid4().hex}'
    assert self.post('/v1/track', orjson.dumps({'messageId': sentinel, 'userId': 's'})
                     ).status_code == 200
    messages = self.subscription.pull_ids([sentinel])
    return [m for m in messages if m[1]['message_id'] != sentinel]

  def published_ids(self) -> collections.Counter:
    return collections.Counter(event['messageId'] for event, _ in self.published())

  def metric(self, name, **labels) -> float:
    return collect.metric(self.base, name, **labels)


@pytest.fixture(scope='module')
def served(local_stack, tmp_path_factory):
  """`python -m collector` on a free port, publishing to a topic of its own with a subscription,
  the body timeout short (1 s) and one allowed origin. It must exit 0 on SIGTERM at the end."""
  yield from serving(tmp_path_factory, {KEY: 'web', SERVER_KEY: 'server'}, {
      'COLLECTOR_BODY_TIMEOUT_SECONDS': str(BODY_TIMEOUT), 'COLLECTOR_ALLOWED_ORIGINS': ORIGIN})


def serving(tmp_path_factory, keys: dict, settings: dict):
  """The body of a `served` fixture: the collector with `keys` and `settings` (environment
  variables) on a topic and subscription of its own, yielded as a Served; stopped after."""
  name = f'abuse{uuid.uuid4().hex[:10]}'
  topic, subscription = publish.ensure_topic_and_subscription(PROJECT, name, f'{name}-sub')
  log = tmp_path_factory.mktemp('collector') / 'collector.log'
  port = free_port()
  process = collect.start_collector(log, PROJECT, name, keys, port, {**os.environ, **settings})
  base = f'http://127.0.0.1:{port}'
  try:
    assert wait_ready(base, process), '\n'.join(localstack.tail_lines(log, 30))
    served = Served(base, port, log, process, Subscription(subscription))
    served.published()  # the subscription is live: nothing before this is missed
    yield served
    served.client.close()
    served.subscription.client.close()
  finally:
    code = collect.stop_collector(process)
  assert code == 0, '\n'.join(localstack.tail_lines(log, 30))


def basic(key: str) -> dict:
  return {'Authorization': 'Basic ' + base64.b64encode(f'{key}:'.encode()).decode()}


def event(message_id: str, **fields) -> dict:
  """A track call carrying an email address and payload text (neither may reach the log)."""
  return {'type': 'track', 'event': 'Email Opened', 'messageId': message_id, 'userId': 'u-1',
          'context': {'traits': {'email': EMAIL}}, 'properties': {'note': NOTE}, **fields}


def body(value) -> bytes:
  return orjson.dumps(value)


def fresh(prefix: str = 'e') -> str:
  return f'{prefix}-{uuid.uuid4().hex[:12]}'


def refused(reply: httpx.Response, status: int, reason: str) -> None:
  assert (reply.status_code, reply.json()['error']) == (status, reason), reply.text[:300]


# ---- raw sockets -----------------------------------------------------------------------------

def read_response(sock: socket.socket) -> tuple[int | None, bytes, bytes]:
  """One response off `sock`: (status, lower-cased head, body); (None, b'', b'') when the server
  closed without answering."""
  data = b''
  while b'\r\n\r\n' not in data:
    chunk = sock.recv(65536)
    if not chunk:
      assert not data, data[:200]
      return None, b'', b''
    data += chunk
  head, _, rest = data.partition(b'\r\n\r\n')
  length = next((int(line.split(b':', 1)[1]) for line in head.lower().split(b'\r\n')
                 if line.startswith(b'content-length:')), 0)
  while len(rest) < length:
    chunk = sock.recv(65536)
    assert chunk, 'the connection closed mid-body'
    rest += chunk
  return int(head.split(b' ', 2)[1]), head.lower(), rest[:length]


def raw(port: int, request: bytes) -> tuple[int | None, bytes, bytes]:
  """Sends `request` as is and reads the answer (the server may answer before all was sent)."""
  with socket.create_connection(('127.0.0.1', port), timeout=20) as sock:
    try:
      sock.sendall(request)
    except OSError:
      pass
    return read_response(sock)


def request_head(method: bytes, target: bytes, lines: list[bytes]) -> bytes:
  return (method + b' ' + target + b' HTTP/1.1\r\n' + b''.join(line + b'\r\n' for line in lines)
          + b'\r\n')


def key_line(key: str = KEY) -> bytes:
  return b'Authorization: ' + basic(key)['Authorization'].encode()


def responses(data: bytes) -> list[tuple[int, bytes]]:
  """(status, body) of each response in `data`, everything one connection answered."""
  found = []
  while data:
    head, _, rest = data.partition(b'\r\n\r\n')
    length = next(int(line.split(b':', 1)[1]) for line in head.lower().split(b'\r\n')
                  if line.startswith(b'content-length:'))
    found.append((int(head.split(b' ', 2)[1]), rest[:length]))
    data = rest[length:]
  return found


def read_all(sock: socket.socket) -> bytes:
  chunks = []
  while chunk := sock.recv(65536):
    chunks.append(chunk)
  return b''.join(chunks)


# ---- write keys ------------------------------------------------------------------------------

def test_the_key_in_the_basic_header_or_in_the_body_is_accepted(served):
  """Segment's server libraries and RudderStack's send the key as the Basic username;
  analytics.js puts it in the body; the beacon in the query. Each works; no key is published."""
  ids = {name: fresh(name) for name in ('header', 'body', 'both', 'batch-body', 'beacon', 'srv')}
  assert served.post('/v1/track', body(event(ids['header']))).status_code == 200
  assert served.post('/v1/track', body(event(ids['body'], writeKey=KEY)), key=None
                     ).status_code == 200
  assert served.post('/v1/track', body(event(ids['both'], writeKey=KEY))).status_code == 200
  assert served.post('/v1/batch', body({'writeKey': KEY, 'batch': [event(ids['batch-body'])]}),
                     key=None).status_code == 200
  assert served.post(f'/beacon/v1/batch?writeKey={KEY}', body({'batch': [event(ids['beacon'])]}),
                     key=None, headers={'Content-Type': 'text/plain'}).status_code == 200
  assert served.post('/v1/identify', body(event(ids['srv'])), key=SERVER_KEY).status_code == 200
  published = served.published()
  assert collections.Counter(e['messageId'] for e, _ in published) == collections.Counter(
      ids.values())
  for sent, attributes in published:
    assert 'writeKey' not in sent and KEY not in orjson.dumps(sent).decode()
    assert attributes['source'] == ('server' if sent['messageId'] == ids['srv'] else 'web')
    assert attributes['message_id'] == sent['messageId']
    assert sent['type'] == ('identify' if sent['messageId'] == ids['srv'] else 'track')


UNKNOWN = 'wk_abuse_not_a_key_0000'


@pytest.mark.parametrize('headers, fields', [
    (basic(UNKNOWN), {}),                                       # wrong, in the header
    ({}, {'writeKey': UNKNOWN}),                                # wrong, in the body
    ({}, {}),                                                   # missing
    (basic(''), {}),                                            # empty Basic username
    ({}, {'writeKey': ''}),                                     # empty in the body
    ({'Authorization': 'Basic !!not-base64!!'}, {}),            # Basic header garbage
    ({'Authorization': 'Basic'}, {}),
    ({'Authorization': f'Bearer {KEY}'}, {}),                   # the right key, wrong scheme
    ({'Authorization': KEY}, {}),
    (basic(KEY.upper()), {}),
    (basic(KEY + ' '), {}),
    (basic(KEY[:-1]), {}),
    (basic('k' * 10_000), {}),
    (basic(UNKNOWN), {'writeKey': KEY}),                        # the right key in the body
                                                                # does not save a wrong header
    ({}, {'writeKey': 12345678901}),                            # not text
    ({}, {'writeKey': [KEY]}),
    ({}, {'write_key': KEY}),                                   # not where the key goes
])
def test_wrong_missing_empty_and_malformed_keys_get_401_and_publish_nothing(served, headers,
                                                                            fields):
  for path, payload in (('/v1/track', event(fresh(), **fields)),
                        ('/v1/batch', {'batch': [event(fresh())], **fields})):
    reply = served.post(path, body(payload), key=None, headers=headers)
    refused(reply, 401, 'unauthorized')
    assert reply.headers['www-authenticate'].startswith('Basic')
  assert served.published() == []


def test_a_beacon_with_a_wrong_key_and_a_basic_header_of_raw_bytes_get_401(served):
  reply = served.post(f'/beacon/v1/batch?writeKey={UNKNOWN}', body({'batch': [event(fresh())]}),
                      key=None)
  refused(reply, 401, 'unauthorized')
  status, _, _ = raw(served.port, request_head(b'POST', b'/v1/track', [
      b'Host: x', b'Authorization: Basic d2tf\x80\xffYWJ1c2U=', b'Content-Length: 2',
      b'Connection: close']) + b'{}')
  assert status == 401
  assert served.published() == []


def test_a_forwarded_for_header_from_an_untrusted_peer_is_not_believed(served):
  """No proxy is trusted here: context.ip is the TCP peer, whatever X-Forwarded-For claims;
  an address the client put in context.ip itself is kept as sent."""
  spoofed, own = fresh('xff'), fresh('own-ip')
  assert served.post('/v1/track', body(event(spoofed)),
                     headers={'X-Forwarded-For': '198.51.100.1, 10.0.0.1'}).status_code == 200
  assert served.post('/v1/track', body(event(own, context={'ip': '192.0.2.1'})),
                     headers={'X-Forwarded-For': '198.51.100.1'}).status_code == 200
  ips = {e['messageId']: e['context']['ip'] for e, _ in served.published()}
  assert ips == {spoofed: '127.0.0.1', own: '192.0.2.1'}


def test_a_refused_requests_body_is_never_taken_for_a_request_of_its_own(served):
  """Pipelined on one connection: a request with a wrong key is refused before its body is
  read, and that body, itself a complete valid request, must be skipped, not run."""
  smuggled, honest = fresh('smuggled'), fresh('honest')

  def track(message_id, key, last=False):
    data = body(event(message_id))
    return request_head(b'POST', b'/v1/track', [
        b'Host: x', key_line(key), b'Content-Length: %d' % len(data),
        *([b'Connection: close'] if last else [])]) + data

  inner = track(smuggled, KEY)
  outer = request_head(b'POST', b'/v1/track', [b'Host: x', key_line(UNKNOWN),
                                                b'Content-Length: %d' % len(inner)]) + inner
  with socket.create_connection(('127.0.0.1', served.port), timeout=20) as sock:
    sock.sendall(outer + track(honest, KEY, last=True))
    answered = responses(read_all(sock))
  assert [status for status, _ in answered] == [401, 200]
  assert served.published_ids() == collections.Counter([honest])


def test_a_websocket_upgrade_is_served_as_plain_http(served):
  """The collector speaks no WebSocket: an Upgrade header changes nothing (it was a 500 while
  a WebSocket library was installed, uvicorn handing over a scope the app does not serve)."""
  upgrade = [b'Host: x', b'Connection: Upgrade', b'Upgrade: websocket',
             b'Sec-WebSocket-Version: 13', b'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==']
  status, _, reply = raw(served.port, request_head(b'GET', b'/healthz', upgrade))
  assert (status, reply) == (200, b'{"status":"ok"}')
  status, _, _ = raw(served.port, request_head(b'GET', b'/v1/track', upgrade))
  assert status == 405
  data = body(event(fresh()))
  status, _, _ = raw(served.port, request_head(b'POST', b'/v1/track', [
      *upgrade, key_line(UNKNOWN), b'Content-Length: %d' % len(data)]) + data)
  assert status == 401
  assert served.published() == []


# ---- bodies ----------------------------------------------------------------------------------

@pytest.mark.parametrize('payload, reason', [
    (b'', 'invalid_json'),
    (b'{"messageId": "x", ', 'invalid_json'),
    (b"{'messageId': 'x'}", 'invalid_json'),
    (b'{"a": 1}{"b": 2}', 'invalid_json'),
    (b'{"a": NaN}', 'invalid_json'),
    (b'{"note": "\xff\xfe"}', 'invalid_json'),
    (b'\x00' * 64, 'invalid_json'),
    (b'[]', 'not_an_object'),
    (b'[{"messageId": "x"}]', 'not_an_object'),
    (b'"track"', 'not_an_object'),
    (b'42', 'not_an_object'),
    (b'null', 'not_an_object'),
])
def test_a_body_that_is_not_a_json_object_is_400_and_publishes_nothing(served, payload, reason):
  for path in ('/v1/track', '/v1/batch', '/v1/import'):
    refused(served.post(path, payload, headers={'Content-Type': 'application/json'}), 400, reason)
  assert served.published() == []


@pytest.mark.parametrize('payload', [
    {}, {'batch': None}, {'batch': {'0': {}}}, {'batch': 'events'},
    {'batch': [{'messageId': 'ok'}, 'event']}, {'batch': [{'messageId': 'ok'}, None]},
])
def test_a_batch_that_is_not_a_list_of_objects_is_400_and_publishes_nothing(served, payload):
  reply = served.post('/v1/batch', body(payload))
  assert reply.status_code == 400 and reply.json()['error'] in ('invalid_batch', 'not_an_object')
  assert served.published() == []


# ---- limits, at and one byte over ------------------------------------------------------------

def padded(size: int, message_id: str) -> dict:
  """An event whose JSON as the collector forwards it is exactly `size` bytes."""
  sent = event(message_id, properties={'note': NOTE, 'pad': ''})
  overhead = len(events.encode(orjson.loads(body(sent)), STAMP, call_type='track')[0])
  sent['properties']['pad'] = 'x' * (size - overhead)
  return sent


def test_an_event_of_32768_bytes_as_forwarded_is_published_and_one_byte_more_is_refused(served):
  at, over = fresh('at'), fresh('over')
  assert served.post('/v1/track', body(padded(32768, at))).status_code == 200
  reply = served.post('/v1/track', body(padded(32769, over)))
  refused(reply, 400, 'event_too_large')
  assert '32769 bytes as forwarded' in reply.json()['message']
  # In a batch: the whole batch is refused, its valid event too.
  refused(served.post('/v1/batch', body({'batch': [event(fresh()), padded(32769, fresh())]})),
          400, 'event_too_large')
  published = served.published()
  assert [e['messageId'] for e, _ in published] == [at]
  assert len(orjson.dumps(published[0][0])) == 32768


def test_a_single_event_body_over_32768_bytes_is_refused_before_it_is_parsed(served):
  refused(served.post('/v1/track', b'{"messageId": "big"}' + b' ' * 32749), 400,
          'body_too_large')
  assert served.published() == []


def batch_body(size: int, ids: list[str]) -> bytes:
  """A batch of `ids` (each event about 25 KB) padded with whitespace to exactly `size` bytes."""
  data = body({'batch': [padded(25_000, i) for i in ids]})
  assert len(data) <= size
  return data[:-1] + b' ' * (size - len(data)) + b'}'


@pytest.mark.parametrize('encoding', ['identity', 'gzip'])
def test_a_batch_body_of_512000_bytes_is_published_and_one_byte_more_is_refused(served,
                                                                                encoding):
  """The limit is on the body as sent and, when gzipped, on what it inflates to."""
  at = [fresh('at') for _ in range(20)]
  exact, over = batch_body(512_000, at), batch_body(512_001, [fresh() for _ in range(20)])
  headers = {}
  if encoding == 'gzip':
    exact, over, headers = gzip.compress(exact), gzip.compress(over), {'Content-Encoding': 'gzip'}
  assert served.post('/v1/batch', exact, headers=headers).status_code == 200
  refused(served.post('/v1/batch', over, headers=headers), 400, 'body_too_large')
  assert served.published_ids() == collections.Counter(at)


def chunked(data: bytes, size: int = 65536) -> bytes:
  return b''.join(b'%x\r\n' % len(data[i:i + size]) + data[i:i + size] + b'\r\n'
                  for i in range(0, len(data), size)) + b'0\r\n\r\n'


def test_a_chunked_batch_body_of_512000_bytes_is_published_and_one_byte_more_refused(served):
  """Without a Content-Length the limit is enforced as the body arrives."""
  at = [fresh('chunked') for _ in range(20)]
  for data, status in ((batch_body(512_000, at), 200),
                       (batch_body(512_001, [fresh() for _ in range(20)]), 400)):
    code, _, reply = raw(served.port, request_head(b'POST', b'/v1/batch', [
        b'Host: x', key_line(), b'Transfer-Encoding: chunked', b'Connection: close'])
                         + chunked(data))
    assert code == status, reply[:200]
  assert orjson.loads(reply)['error'] == 'body_too_large'
  assert served.published_ids() == collections.Counter(at)


def test_a_body_declared_over_the_limit_is_refused_without_reading_it(served):
  status, _, reply = raw(served.port, request_head(b'POST', b'/v1/batch', [
      b'Host: x', key_line(), b'Content-Length: 512001', b'Connection: close']))
  assert status == 400 and orjson.loads(reply)['error'] == 'body_too_large'
  assert served.published() == []


def test_2500_events_are_published_once_each_and_2501_refused(served):
  ids = [fresh('n') for _ in range(2500)]
  small = [{'messageId': i, 'userId': 'u', 'event': 'E'} for i in ids]
  assert served.post('/v1/batch', body({'batch': small})).status_code == 200
  refused(served.post('/v1/batch', body({'batch': small + [{'messageId': fresh()}]})), 400,
          'batch_too_many_events')
  assert served.published_ids() == collections.Counter(ids)


def peak_rss_kb(pid: int) -> int:
  text = pathlib.Path(f'/proc/{pid}/status').read_text()
  return int(next(line for line in text.splitlines() if line.startswith('VmHWM:')).split()[1])


@pytest.mark.parametrize('path, mib', [('/v1/track', 30), ('/v1/batch', 480)])
def test_a_gzip_bomb_is_refused_without_the_collector_growing(served, path, mib):
  """Hundreds of MiB of zeros in a body under the size limit: refused as too large when
  inflated, and the process's peak memory does not move by anything like that."""
  bomb = gzip_of_zeros(mib)
  assert len(bomb) < (32768 if path == '/v1/track' else 512_000)
  before = peak_rss_kb(served.process.pid)
  started = time.monotonic()
  refused(served.post(path, bomb, headers={'Content-Encoding': 'gzip'}), 400, 'body_too_large')
  assert time.monotonic() - started < 5
  assert peak_rss_kb(served.process.pid) - before < 50_000
  assert served.client.get('/healthz').status_code == 200
  assert served.published() == []


# Named ids: a gzip header holds the time it was made, so ids derived from the bytes would differ
# between the collections of two pytest-xdist workers.
@pytest.mark.parametrize('payload, reason', [
    (gzip.compress(body(event('gz-cut')))[:-9], 'invalid_gzip'),           # truncated
    (gzip.compress(body(event('gz-tail'))) + b'trailing', 'invalid_gzip'),
    (body(event('gz-plain')), 'invalid_gzip'),                           # not gzip at all
    (b'', 'invalid_gzip'),
    (gzip.compress(b'[1, 2]'), 'not_an_object'),
], ids=['truncated', 'trailing-bytes', 'not-gzip', 'empty', 'gzip-array'])
def test_a_broken_gzip_body_is_400_and_publishes_nothing(served, payload, reason):
  refused(served.post('/v1/track', payload, headers={'Content-Encoding': 'gzip'}), 400, reason)
  assert served.published() == []


@pytest.mark.parametrize('encoding', ['br', 'deflate', 'gzip, gzip', 'compress', 'zstd', 'x' * 300])
def test_an_unsupported_content_encoding_is_415_and_publishes_nothing(served, encoding):
  data = gzip.compress(body(event(fresh())))
  refused(served.post('/v1/track', data, headers={'Content-Encoding': encoding}), 415,
          'unsupported_encoding')
  assert served.published() == []


# ---- nesting ---------------------------------------------------------------------------------

def deep(levels: int, **fields) -> bytes:
  """An event whose `properties` nest `levels` objects deep (written by hand: orjson writes at
  most 254)."""
  return (body(event(fresh(), **fields))[:-1] + b',"properties":' + b'{"a":' * (levels - 1)
          + b'{}' + b'}' * levels)


@pytest.mark.parametrize('levels, reason', [(300, 'unencodable'), (2000, 'invalid_json')])
def test_deep_nesting_is_400_and_publishes_nothing(served, levels, reason):
  """300 levels parse but cannot be written back (orjson's limit is 254); 2,000 do not parse
  (orjson reads at most 1,024)."""
  text = deep(levels)
  if levels == 300:
    assert orjson.loads(text)['properties']  # it does parse: what fails is writing it back
  refused(served.post('/v1/track', text), 400, reason)
  batch = b'{"batch": [' + body(event(fresh())) + b', ' + text + b']}'
  refused(served.post('/v1/batch', batch), 400, reason)
  assert served.published() == []


# ---- slow and cut-off bodies -----------------------------------------------------------------

def test_a_stalled_body_is_answered_408_within_the_body_timeout(served):
  partial = body(event(fresh()))
  with socket.create_connection(('127.0.0.1', served.port), timeout=20) as sock:
    sock.sendall(request_head(b'POST', b'/v1/track', [
        b'Host: x', key_line(), b'Content-Length: %d' % (len(partial) + 50)]) + partial)
    started = time.monotonic()
    status, _, reply = read_response(sock)
    waited = time.monotonic() - started
  assert status == 408 and orjson.loads(reply)['error'] == 'body_timeout'
  assert BODY_TIMEOUT * 0.9 < waited < BODY_TIMEOUT + 3
  assert served.published() == []


def test_a_body_trickled_a_byte_at_a_time_is_cut_off_at_the_body_timeout(served):
  """The timeout bounds the whole body, not the gap between bytes (a slowloris never trips
  that)."""
  data = body(event(fresh()))
  with socket.create_connection(('127.0.0.1', served.port), timeout=20) as sock:
    sock.sendall(request_head(b'POST', b'/v1/track', [
        b'Host: x', key_line(), b'Content-Length: %d' % len(data)]))
    started = time.monotonic()
    sock.settimeout(0.2)
    for byte in data:
      sock.sendall(bytes([byte]))
      try:
        if sock.recv(1, socket.MSG_PEEK):
          break
      except socket.timeout:
        continue
    sock.settimeout(20)
    status, _, reply = read_response(sock)
    waited = time.monotonic() - started
  assert status == 408 and waited < BODY_TIMEOUT + 3
  assert served.published() == []


def _closed_within(sock, seconds) -> float | None:
  """Seconds until the server closed `sock` (reads until EOF), None if it stayed open."""
  started = time.monotonic()
  sock.settimeout(seconds)
  try:
    while sock.recv(4096):
      pass
  except socket.timeout:
    return None
  except ConnectionResetError:
    pass
  return time.monotonic() - started


def test_a_connection_that_never_finishes_its_headers_is_closed_at_the_deadline(served):
  """uvicorn itself never times out a request's headers: a few idle sockets would hold every
  slot of COLLECTOR_MAX_CONCURRENCY. The body timeout bounds the headers too."""
  with socket.create_connection(('127.0.0.1', served.port), timeout=20) as idle, \
      socket.create_connection(('127.0.0.1', served.port), timeout=20) as partial:
    partial.sendall(b'POST /v1/track HTTP/1.1\r\nHost: x\r\n')
    for sock in (idle, partial):
      waited = _closed_within(sock, BODY_TIMEOUT + 5)
      assert waited is not None and waited < BODY_TIMEOUT + 3
  # The second request on a kept-alive connection is held to the same deadline.
  with socket.create_connection(('127.0.0.1', served.port), timeout=20) as sock:
    sock.sendall(request_head(b'GET', b'/healthz', [b'Host: x']))
    assert read_response(sock)[0] == 200
    sock.sendall(b'GET /healthz HTTP/1.1\r\nHo')
    waited = _closed_within(sock, BODY_TIMEOUT + 10)
    assert waited is not None and waited < BODY_TIMEOUT + 3
  assert served.client.get('/healthz').status_code == 200
  assert served.published() == []


def test_a_body_cut_off_before_its_declared_length_publishes_nothing(served):
  """What arrived is a whole JSON event; it must not be published without the rest."""
  partial = body(event(fresh()))
  for path, data in (('/v1/track', partial), ('/v1/batch', b'{"batch": [' + partial + b']}')):
    with socket.create_connection(('127.0.0.1', served.port), timeout=20) as sock:
      sock.sendall(request_head(b'POST', path.encode(), [
          b'Host: x', key_line(), b'Content-Length: %d' % (len(data) + 1000)]) + data)
      sock.shutdown(socket.SHUT_WR)
      assert read_response(sock)[0] is None  # closed without an answer
  assert served.client.get('/healthz').status_code == 200
  assert served.published() == []


# ---- routes, methods, CORS -------------------------------------------------------------------

@pytest.mark.parametrize('path', ['/', '/v1', '/v1/', '/v1/trackx', '/v1/track/', '/v2/track',
                                  '/V1/TRACK', '/v1/track/extra', '/v1/pixel', '/v1/pixel/order',
                                  '/pixel/v1/identify', '/beacon/v1/track', '/v1/batch%2F',
                                  '/docs', '/openapi.json', '/..%2Fv1/track'])
def test_unknown_routes_are_404_and_publish_nothing(served, path):
  for method in ('GET', 'POST'):
    reply = served.client.request(method, path, headers=basic(KEY),
                                  content=body(event(fresh())) if method == 'POST' else None)
    assert reply.status_code == 404, (method, path, reply.status_code)
  assert served.published() == []


@pytest.mark.parametrize('method, path, allowed', [
    ('GET', '/v1/track', 'POST'), ('PUT', '/v1/track', 'POST'), ('DELETE', '/v1/batch', 'POST'),
    ('PATCH', '/v1/identify', 'POST'), ('GET', '/beacon/v1/batch', 'POST'),
    ('POST', '/v1/pixel/track', 'GET'), ('PUT', '/pixel/v1/page', 'GET'),
    ('POST', '/healthz', 'GET'), ('POST', '/metrics', 'GET'),
])
def test_wrong_methods_are_405_with_allow_and_publish_nothing(served, method, path, allowed):
  reply = served.client.request(method, path, headers=basic(KEY),
                                content=body(event(fresh())))
  # The tracking routes also answer OPTIONS (CORS preflight); health and metrics do not.
  methods = allowed if path in ('/healthz', '/metrics') else f'{allowed}, OPTIONS'
  assert reply.status_code == 405 and reply.headers['allow'] == methods
  assert served.published() == []


def test_cors_preflight_is_allowed_only_for_the_configured_origin(served):
  ask = {'Access-Control-Request-Method': 'POST',
         'Access-Control-Request-Headers': 'authorization, content-type'}
  allowed = served.client.options('/v1/batch', headers={'Origin': ORIGIN, **ask})
  assert allowed.status_code == 204
  assert allowed.headers['access-control-allow-origin'] == ORIGIN
  assert 'POST' in allowed.headers['access-control-allow-methods']
  assert 'authorization' in allowed.headers['access-control-allow-headers'].lower()
  for origin in ('https://evil.example', 'https://shop.example.evil.example', 'null', ''):
    reply = served.client.options('/v1/batch', headers={'Origin': origin, **ask})
    assert reply.status_code == 403 and 'access-control-allow-origin' not in reply.headers
  assert served.client.options('/v1/track', headers=ask).status_code == 403  # no Origin at all
  # Answers to the requests themselves carry the header for the allowed origin only.
  assert served.post('/v1/track', b'[]', headers={'Origin': ORIGIN}).headers[
      'access-control-allow-origin'] == ORIGIN
  assert 'access-control-allow-origin' not in served.post(
      '/v1/track', b'[]', headers={'Origin': 'https://evil.example'}).headers
  assert served.published() == []


# ---- pixels ----------------------------------------------------------------------------------

def b64(value) -> str:
  data = value if isinstance(value, bytes) else body(value)
  return base64.urlsafe_b64encode(data).decode().rstrip('=')


def gif(reply: httpx.Response) -> None:
  assert reply.status_code == 200 and reply.headers['content-type'] == 'image/gif'
  assert reply.content == PIXEL_GIF


def test_valid_pixels_answer_a_gif_and_publish_their_event(served):
  segment, rudder = fresh('px'), fresh('rpx')
  gif(served.client.get('/v1/pixel/track', params={'data': b64(event(segment, writeKey=KEY))}))
  gif(served.client.get('/pixel/v1/page', params={
      'writeKey': KEY, 'messageId': rudder, 'anonymousId': 'a1', 'properties.note': NOTE,
      'context.traits.email': EMAIL}))
  published = {e['messageId']: e for e, _ in served.published()}
  assert published.keys() == {segment, rudder}
  assert published[segment]['type'] == 'track' and 'writeKey' not in published[segment]
  assert published[rudder]['type'] == 'page' and published[rudder]['properties'] == {
      'note': NOTE}
  assert 'writeKey' not in published[rudder]


@pytest.mark.parametrize('path, params', [
    ('/v1/pixel/track', {}),
    ('/v1/pixel/track', {'data': 'not base64 at all!'}),
    ('/v1/pixel/track', {'data': '%%%'}),
    ('/v1/pixel/track', {'data': 'd2tf\u00e9bGl2'}),
    ('/v1/pixel/track', {'data': b64([event('px-array', writeKey=KEY)])}),
    ('/v1/pixel/track', {'data': b64(event('px-nokey'))}),
    ('/v1/pixel/track', {'data': b64(event('px-badkey', writeKey=UNKNOWN))}),
    ('/v1/pixel/track', {'data': base64.b64encode(b'{"writeKey": "' + KEY.encode() + b'", ')}),
    ('/v1/pixel/identify', {'data': b64(deep(300, writeKey=KEY))}),
    ('/v1/pixel/track', {'data': b64(event('px-big', writeKey=KEY, pad='x' * 40_000))}),
    ('/pixel/v1/track', {'messageId': 'rpx-nokey', 'anonymousId': 'a'}),
    ('/pixel/v1/track', {'writeKey': UNKNOWN, 'messageId': 'rpx-badkey'}),
    ('/pixel/v1/track', {'writeKey': KEY, 'properties': '1', 'properties.plan': 'x'}),
    ('/pixel/v1/page', {'writeKey': KEY, 'a.b.c.d.e.f.g.h.i': 'deep'}),
    ('/pixel/v1/page', {'writeKey': KEY, 'context..ip': '1.2.3.4'}),
    ('/pixel/v1/page', {'writeKey': KEY, **{f'f{i}': 'v' for i in range(300)}}),
])
def test_bad_pixels_still_answer_a_gif_and_publish_nothing(served, path, params):
  gif(served.client.get(path, params=params))
  assert served.published() == []


def test_huge_query_strings_are_refused_and_publish_nothing(served):
  """Over the collector's 32 KB a pixel still gets its GIF; over 64 KB the HTTP parser refuses
  the request line (400) before the collector sees it. A POST's query is not read."""
  fields = {'writeKey': KEY, 'messageId': 'rpx-huge', 'anonymousId': 'a'}
  gif(served.client.get('/pixel/v1/track', params={**fields, 'pad': 'x' * 40_000}))
  gif(served.client.get('/v1/pixel/track', params={'data': b64(event('px-huge', writeKey=KEY)),
                                                    'pad': 'x' * 40_000}))
  for target in (b'/pixel/v1/track?writeKey=' + KEY.encode() + b'&pad=' + b'x' * 1_000_000,
                 b'/v1/track?' + b'a=b&' * 250_000):
    status, _, _ = raw(served.port, request_head(b'POST' if b'/v1/track?' in target else b'GET',
                                                 target, [b'Host: x', key_line(),
                                                          b'Content-Length: 2',
                                                          b'Connection: close']) + b'{}')
    assert status == 400
  reply = served.post('/beacon/v1/batch?writeKey=' + KEY + '&a=b' * 300, body({'batch': []}),
                      key=None)
  refused(reply, 400, 'invalid_query')
  kept = fresh('q')
  assert served.post('/v1/track?' + 'a=b&' * 5000, body(event(kept))).status_code == 200
  assert served.published_ids() == collections.Counter([kept])


# ---- headers ---------------------------------------------------------------------------------

def with_headers(count: int, size: int) -> bytes:
  """A valid track request with `count` headers whose names and values total `size` bytes."""
  data = body(event(fresh('h')))
  lines = [b'Host: x', key_line(), b'Content-Length: %d' % len(data), b'Connection: close']
  lines += [b'X-Pad-%03d: v' % i for i in range(count - len(lines))]
  total = sum(len(k) + len(v.strip()) for k, _, v in (line.partition(b':') for line in lines))
  lines[-1] += b'v' * (size - total)
  return request_head(b'POST', b'/v1/track', lines) + data


def test_100_headers_and_16384_header_bytes_are_accepted_and_one_more_is_431(served):
  accepted = []
  for count, size, status in ((100, 2000, 200), (101, 2000, 431), (20, 16384, 200),
                              (20, 16385, 431)):
    request = with_headers(count, size)
    code, _, reply = raw(served.port, request)
    assert code == status, (count, size, reply[:200])
    if status == 200:
      accepted.append(orjson.loads(request.partition(b'\r\n\r\n')[2])['messageId'])
  for extra in ({f'X-H-{i}': 'v' for i in range(1000)}, {'X-Big': 'v' * 1_000_000}):
    code, _, _ = raw(served.port, request_head(b'POST', b'/v1/track', [
        b'Host: x', key_line(), *(k.encode() + b': ' + v.encode() for k, v in extra.items()),
        b'Content-Length: 2', b'Connection: close']) + b'{}')
    assert code == 431
  assert served.published_ids() == collections.Counter(accepted)


# ---- metrics and logs ------------------------------------------------------------------------

def test_metrics_count_refused_events_by_reason(served):
  reasons = ('unauthorized', 'invalid_json', 'not_an_object', 'body_too_large',
             'batch_too_many_events', 'event_too_large', 'invalid_gzip', 'unsupported_encoding',
             'invalid_pixel', 'body_timeout')
  before = {r: served.metric('collector_events_refused_total', reason=r) for r in reasons}
  accepted = served.metric('collector_events_accepted_total', source='web')
  served.post('/v1/track', body(event(fresh())), key=UNKNOWN)
  served.post('/v1/batch', body({'batch': [event(fresh())]}), key=None)
  served.client.get('/pixel/v1/track', params={'writeKey': UNKNOWN})
  served.post('/v1/track', b'{')
  served.post('/v1/track', b'[]')
  served.post('/v1/track', b'"x"')
  served.post('/v1/track', b' ' * 40_000)
  served.post('/v1/batch', body({'batch': [{}] * 2501}))
  served.post('/v1/track', body(padded(32769, fresh())))
  served.post('/v1/track', b'{}', headers={'Content-Encoding': 'gzip'})
  served.post('/v1/track', b'{}', headers={'Content-Encoding': 'br'})
  served.client.get('/v1/pixel/track', params={'data': '!!'})
  with socket.create_connection(('127.0.0.1', served.port), timeout=20) as sock:
    sock.sendall(request_head(b'POST', b'/v1/track', [b'Host: x', key_line(),
                                                       b'Content-Length: 10']) + b'{')
    assert read_response(sock)[0] == 408
  ok = fresh()
  assert served.post('/v1/batch', body({'batch': [event(ok), event(fresh('ok2'))]})
                     ).status_code == 200
  after = {r: served.metric('collector_events_refused_total', reason=r) for r in reasons}
  assert {r: after[r] - before[r] for r in reasons} == {
      'unauthorized': 3, 'invalid_json': 1, 'not_an_object': 2, 'body_too_large': 1,
      'batch_too_many_events': 1, 'event_too_large': 1, 'invalid_gzip': 1,
      'unsupported_encoding': 1, 'invalid_pixel': 1, 'body_timeout': 1}
  assert served.metric('collector_events_accepted_total', source='web') - accepted == 2
  assert len(served.published()) == 2


def test_the_log_never_holds_a_key_an_email_or_payload_text(served):
  """Runs last: by now the log holds every request above. Each line is JSON; none carries a
  write key (plain or as its Basic header), an email address or payload text, and none
  reports an unhandled error."""
  served.post('/v1/track', body(event(fresh(), writeKey=KEY)), key=None)
  served.post('/v1/track', body(event(fresh())), key=UNKNOWN)
  served.post('/v1/track', b'{"note": "' + NOTE.encode() + b'", ' + EMAIL.encode())
  served.post('/v1/track', deep(300))
  served.client.get('/v1/pixel/track', params={'data': b64(event('px-log', writeKey=UNKNOWN))})
  served.published()
  text = served.log.read_text()
  entries = [orjson.loads(line) for line in text.splitlines()]
  for secret in (KEY, SERVER_KEY, UNKNOWN, basic(KEY)['Authorization'][6:], EMAIL, NOTE,
                 '@example.com'):
    assert secret not in text, secret
  assert not [e for e in entries if e.get('status', 0) >= 500 or e['level'] in ('ERROR',
                                                                                 'CRITICAL')]
  requests = [e for e in entries if e['message'] == 'request']
  assert len(requests) >= 6  # its own, at least: the requests are logged, only not their data
  assert {e['reason'] for e in requests} >= {'unauthorized', 'invalid_json', 'unencodable'}
