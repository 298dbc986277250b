"""Abuse of the send-time API: the connector as deployed (`python -m connector`, its JSON logs
captured) against the Firestore emulator, with seeded customers whose ids are prefixes, suffixes
and look-alikes of each other.

Oversized and malicious requests must get a 4xx (never a 5xx), and no response may carry a seeded
customer's data other than the one asked for: every seeded document holds a random marker, and
each body is searched for the markers. Requests no HTTP client would send (CRLF or NUL in a
header, unencoded `..`) go over a raw socket.
"""
import asyncio
import base64
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid

import httpx
import orjson
import pytest
from google.cloud import firestore

from connector.app import PUBLIC_PATHS, create_app
from connector.config import Settings
from scripts import demo_connector
from tests.integration.test_connector_api import document

REPO = pathlib.Path(__file__).resolve().parents[2]
PROJECT = 'demo-local'
KEY, OTHER_KEY = 'k-abuse-3f9a0c1e5b7d2468ac', 'k-abuse-rotated-7c1e9a3f5b'
# Prefixes, suffixes and look-alikes of one another, and one with non-ASCII text.
CUSTOMERS = ('cust-001', 'cust-0011', 'xcust-001', 'cust-00', 'zoë-ü 🦄')
MARKS = {customer_id: f'mark-{uuid.uuid4().hex}' for customer_id in CUSTOMERS}
PERSONALIZATION = '/v1/customers/{customer_id}/personalization'
BATCH_GET = '/v1/personalization:batchGet'


@pytest.fixture(scope='module')
def served(local_stack, tmp_path_factory):
  """The connector as `python -m connector` runs it, on the seeded collection; its stderr (JSON
  log lines) goes to a file. Cache off, so every request reaches Firestore."""
  collection = f'abuse{int(time.time() * 1000)}'
  db = firestore.Client(project=PROJECT)
  for customer_id in CUSTOMERS:
    seeded = document(customer_id)
    seeded['first_name'] = MARKS[customer_id]
    seeded['cart']['items'][0]['name'] = MARKS[customer_id]
    db.collection(collection).document(customer_id).set(seeded)
  port = demo_connector.free_port()
  log_path = tmp_path_factory.mktemp('connector') / 'connector.log'
  with open(log_path, 'wb') as log:
    server = subprocess.Popen(
        [sys.executable, '-m', 'connector'], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, **local_stack, 'CONNECTOR_PROJECT': PROJECT,
             'CONNECTOR_COLLECTION': collection, 'CONNECTOR_API_KEYS': f'{KEY},{OTHER_KEY}',
             'CONNECTOR_PORT': str(port), 'CONNECTOR_CACHE_TTL_SECONDS': '0'})
  base = f'http://127.0.0.1:{port}'
  try:
    assert demo_connector.wait_ready(base, server), log_path.read_text()
    with httpx.Client(base_url=base, timeout=30) as client:
      yield client, port, log_path
  finally:
    server.terminate()
    server.wait(timeout=10)


def leaked(body: bytes | str, allowed: str | None = None) -> list[str]:
  """Seeded customers other than `allowed` whose data appears in `body`."""
  text = body.decode('utf-8', 'replace') if isinstance(body, bytes) else body
  return [c for c, mark in MARKS.items() if c != allowed and mark in text]


def refused(status: int, body: bytes | str, allowed: str | None = None) -> None:
  assert 400 <= status < 500, (status, body[:300])
  assert not leaked(body, allowed)


def path_of(customer_id: str) -> str:
  return PERSONALIZATION.format(customer_id=urllib.parse.quote(customer_id, safe=''))


def bearer(key: str = KEY) -> dict:
  return {'Authorization': f'Bearer {key}'}


def raw(port: int, request: bytes) -> tuple[int, bytes, bytes]:
  """Sends `request` as is; (status, response head, body). The request should say
  `Connection: close`; the server may also close early (then what it sent is the answer)."""
  with socket.create_connection(('127.0.0.1', port), timeout=20) as sock:
    try:
      sock.sendall(request)
    except OSError:  # the server refused and closed while we were still sending
      pass
    chunks = []
    while True:
      try:
        chunk = sock.recv(65536)
      except OSError:
        break
      if not chunk:
        break
      chunks.append(chunk)
  response = b''.join(chunks)
  assert response.startswith(b'HTTP/1.1 '), response[:200]
  head, _, body = response.partition(b'\r\n\r\n')
  return int(head.split(b' ', 2)[1]), head, body


def raw_request(port: int, method: bytes, target: bytes, headers: bytes = b'',
                body: bytes | None = None) -> tuple[int, bytes, bytes]:
  """One request with exactly these header lines (each ending in CRLF)."""
  if body is not None:
    headers += b'Content-Type: application/json\r\nContent-Length: %d\r\n' % len(body)
  return raw(port, method + b' ' + target + b' HTTP/1.1\r\nHost: 127.0.0.1\r\n' + headers
             + b'Connection: close\r\n\r\n' + (body or b''))


def raw_get(port: int, target: bytes, headers: bytes = b'') -> tuple[int, bytes, bytes]:
  """A GET with the valid key and `headers` (lines ending in CRLF)."""
  return raw_request(port, b'GET', target, b'Authorization: Bearer ' + KEY.encode() + b'\r\n'
                     + headers)


# ---- the seeded data is served, each customer only their own -------------------------------------

@pytest.mark.parametrize('customer_id', CUSTOMERS)
def test_each_seeded_customer_gets_exactly_their_own_document(served, customer_id):
  client, _, _ = served
  reply = client.get(path_of(customer_id), headers=bearer())
  assert reply.status_code == 200
  assert reply.json()['customer_id'] == customer_id and reply.json()['first_name'] == MARKS[
      customer_id]
  assert not leaked(reply.content, customer_id)


# ---- ids -----------------------------------------------------------------------------------------

@pytest.mark.parametrize('length', [257, 300, 10_000, 100_000])
def test_very_long_customer_ids_are_refused(served, length):
  client, port, _ = served
  for customer_id in ('c' * length, 'cust-001' + 'x' * (length - 8), '🦄' * length):
    status, _, body = raw_get(port, path_of(customer_id).encode())
    refused(status, body)
    reply = client.post(BATCH_GET, headers=bearer(), json={'customer_ids': [customer_id]})
    # 100,000 characters do not fit a batchGet body (64 KiB): 413 rather than 400.
    assert reply.status_code == (400 if len(reply.request.content) <= 65536 else 413)
    refused(reply.status_code, reply.content)


@pytest.mark.parametrize('target', [
    b'/v1/customers/../cust-001/personalization',
    b'/v1/customers/%2e%2e%2fcust-001/personalization',
    b'/v1/customers/..%2Fcust-001/personalization',
    b'/v1/customers/..%2fcust-0011/personalization',
    b'/v1/customers/%2e%2e/personalization',
    b'/v1/customers/%2E/personalization',
    b'/v1/customers/./personalization',
    b'/v1/customers/cust-001%2F..%2Fcust-0011/personalization',
    b'/v1/customers/customers%2Fcust-001/personalization',
    b'/v1/customers/customers/cust-001/personalization',
    b'/v1/customers/cust-001/personalization/../../cust-0011/personalization',
    b'/v1/customers/%252e%252e%252fcust-001/personalization',   # double-encoded
    b'/v1/customers/..%5Ccust-001/personalization',             # backslash
    b'/v1/customers/__name__/personalization',                  # Firestore-reserved ids
    b'/v1/customers/%5F%5Fcust-001%5F%5F/personalization',
    b'/v1/customers/__.*__/personalization',
    b'/v1/customers/cust-001/personalization/',                 # no redirect built from Host
    b'//v1/customers/cust-001/../cust-0011/personalization',
    b'/v1/customers/cust-001%00/personalization',
    b'/v1/customers/cust-001\x00/personalization',              # raw NUL in the request line
    b'/v1/customers/cust-001 HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /personalization',
])
def test_path_traversal_and_reserved_ids_are_refused(served, target):
  _, port, _ = served
  status, head, body = raw_get(port, target)
  refused(status, body)
  assert b'location:' not in head.lower() and b'x-injected' not in head.lower()


@pytest.mark.parametrize('customer_id', [
    'cust-0', 'cust-001 ', ' cust-001', 'CUST-001', 'cust-001x', 'cust-0011 ', 'ust-001',
    'cust-001*', 'cust-00%', 'cust-001;', 'cust-001?', 'cust-001#', 'cust-001.', 'cust-001\\',
    'ｃust-001',              # fullwidth c
    'cust\u2011001',          # non-breaking hyphen
    'zoe\u0308-u\u0308 🦄',   # the seeded id decomposed (NFD): a different id, not normalised
    'zoë-ü', 'zoë-ü 🦄 ', '{"$ne": null}', "cust-001' OR '1'='1", '*', '%',
    '__',                     # too short to be a reserved __name__
])
def test_ids_near_a_seeded_customers_id_find_nobody(served, customer_id):
  client, _, _ = served
  reply = client.get(path_of(customer_id), headers=bearer())
  assert reply.status_code == 404 and reply.json() == {'error': 'not_found'}
  batch = client.post(BATCH_GET, headers=bearer(), json={'customer_ids': [customer_id]})
  assert batch.status_code == 200 and batch.json() == {'customers': {}, 'not_found': [customer_id]}


@pytest.mark.parametrize('customer_id', [
    'cust-001\x00', '\x00', 'cust-001\r\nX-Injected: 1', 'cust-001\n', '\x1b[31mcust-001',
    'cust-001\t', 'cust-001\x7f', 'cust-001\u200b', 'cust\u202e100-tsuc', '\ufeffcust-001',
    '__cust-001__', '____', '.', '..', 'a/b', 'cust-001/../cust-0011'])
def test_control_characters_reserved_and_slash_ids_are_400(served, customer_id):
  client, _, _ = served
  # In a batch, one such id refuses the whole request (nothing is looked up).
  for reply in (client.get(path_of(customer_id), headers=bearer()),
                client.post(BATCH_GET, headers=bearer(),
                            json={'customer_ids': ['cust-001', customer_id]})):
    # In a path, '/' (even as %2F) no longer matches the route, and the client removes '.' and
    # '..' segments: 404 from the router (the raw-path test above sends %2E forms as they are).
    in_path = reply.request.method == 'GET'
    expected = 404 if in_path and ('/' in customer_id or customer_id in ('.', '..')) else 400
    assert reply.status_code == expected, reply.text
    refused(reply.status_code, reply.content)
    assert len(reply.content) < 300 and reply.headers['content-type'] == 'application/json'


def test_a_reserved_id_never_fails_other_customers_lookups(served):
  # Lookups arriving within 2 ms share one Firestore call, and Firestore fails the whole call for
  # a reserved id: before such ids were refused up front, concurrent requests got 503 with it.
  client, port, _ = served

  async def burst():
    async with httpx.AsyncClient(base_url=f'http://127.0.0.1:{port}', timeout=30) as session:
      replies = await asyncio.gather(*(
          session.get(path_of('cust-001' if i % 2 else f'__{i}__'), headers=bearer())
          for i in range(40)))
      return replies[1::2], replies[0::2]

  good, bad = asyncio.run(burst())
  assert [r.status_code for r in good] == [200] * 20  # was 503: the batch failed with them
  assert [r.status_code for r in bad] == [400] * 20


# ---- headers -------------------------------------------------------------------------------------

@pytest.mark.parametrize('header', [
    b'Authorization: Bearer ' + KEY.encode() + b'\rX-Injected: 1\r\n',
    b'X-API-Key: ' + KEY.encode() + b'\nX-Injected: 1\r\n',
    b'X-API-Key: ' + KEY.encode() + b'\x00\r\n',
    b'X-API-Key: nope\r\n ' + KEY.encode() + b'\r\n',          # obsolete line folding
    b'X API Key: ' + KEY.encode() + b'\r\n',                   # space in a header name
    b'X-Note: \r\n\r\nGET /metrics HTTP/1.1\r\nX-Injected: 1\r\n',  # a smuggled second request
])
def test_header_injection_is_refused_and_never_reflected(served, header):
  _, port, _ = served
  request = (b'GET ' + path_of('cust-001').encode() + b' HTTP/1.1\r\nHost: 127.0.0.1\r\n' + header
             + b'Connection: close\r\n\r\n')
  status, head, body = raw(port, request)
  if header.startswith(b'X-Note'):
    # Not an injection at the HTTP level: the empty line ends the first request (no key: 401).
    assert status == 401
  else:
    refused(status, body)
  assert b'x-injected' not in head.lower() and b'x-injected' not in body.lower()
  assert b'connector_requests_total' not in body


@pytest.mark.parametrize('extra', [
    b''.join(b'X-Filler-%d: v\r\n' % i for i in range(200)),       # many headers
    b'X-Long: ' + b'a' * 65536 + b'\r\n',                           # one very long header
    b'Cookie: ' + b'c=' + b'x' * 20_000 + b'\r\n',
])
def test_oversized_headers_get_431(served, extra):
  _, port, _ = served
  status, _, body = raw_get(port, path_of('cust-001').encode(), extra)
  assert status == 431 and orjson.loads(body)['error'] == 'headers_too_large'
  refused(status, body)


def test_a_normal_number_of_headers_is_fine(served):
  _, port, _ = served
  status, _, body = raw_get(port, path_of('cust-001').encode(),
                            b''.join(b'X-Filler-%d: v\r\n' % i for i in range(50)))
  assert status == 200 and not leaked(body, 'cust-001')


# ---- auth ----------------------------------------------------------------------------------------

def basic(user: str, password: str) -> bytes:
  return b'Basic ' + base64.b64encode(f'{user}:{password}'.encode())


K, O = KEY.encode(), OTHER_KEY.encode()


@pytest.mark.parametrize('headers, query', [
    (b'', b''),
    (b'Authorization: Bearer \r\n', b''),
    (b'Authorization: Bearer\r\n', b''),
    (b'Authorization: Bearer \t \r\n', b''),
    (b'X-API-Key: \r\n', b''),
    (b'Authorization: Bearer ' + K[:-1] + b'\r\n', b''),          # a prefix of a valid key
    (b'Authorization: Bearer ' + K[:8] + b'\r\n', b''),
    (b'X-API-Key: ' + K[:-1] + b'\r\n', b''),
    (b'Authorization: Bearer ' + K + b'x\r\n', b''),             # a valid key plus a suffix
    (b'Authorization: Bearer x' + K + b'\r\n', b''),
    (b'Authorization: Bearer ' + K[:10] + b' ' + K[10:] + b'\r\n', b''),  # whitespace inside
    (b'Authorization: Bearer ' + K[:10] + b'\t' + K[10:] + b'\r\n', b''),
    (b'Authorization: Bearer ' + K + b' ' + K + b'\r\n', b''),
    (b'Authorization: Bearer ' + K + b',' + O + b'\r\n', b''),
    (b'X-API-Key: ' + K + b',' + O + b'\r\n', b''),
    (b'Authorization: Bearer ' + K.upper() + b'\r\n', b''),
    (b'Authorization: Bearer ' + K + b'\xa0\r\n', b''),            # a non-breaking space
    (b'Authorization: Basic ' + K + b'\r\n', b''),                # wrong schemes
    (b'Authorization: ' + basic('', KEY) + b'\r\n', b''),
    (b'Authorization: ' + basic(KEY, '') + b'\r\n', b''),
    (b'Authorization: Token ' + K + b'\r\n', b''),
    (b'Authorization: ' + K + b'\r\n', b''),
    (b'Authorization: Bearer' + K + b'\r\n', b''),
    (b'Authorization: Bearer:' + K + b'\r\n', b''),
    (b'Authorization: Bearer wrong-key-0123456789\r\nX-API-Key: ' + K + b'\r\n', b''),
    (b'Cookie: api_key=' + K + b'\r\n', b''),
    (b'X-Forwarded-For: 127.0.0.1\r\nX-Real-IP: 127.0.0.1\r\n', b''),
    (b'', b'?api_key=' + K),                                      # the key in the query string
    (b'', b'?key=' + K + b'&access_token=' + K + b'&X-API-Key=' + K),
    (b'X-API-Key: ' + KEY.replace('a', '\u0430').encode() + b'\r\n', b''),  # Cyrillic look-alike
])
def test_auth_bypass_attempts_are_401_the_same_for_known_and_unknown(served, headers, query):
  _, port, _ = served
  answers = [
      raw_request(port, b'GET', path_of('cust-001').encode() + query, headers),
      raw_request(port, b'GET', path_of('nobody').encode() + query, headers),
      raw_request(port, b'POST', BATCH_GET.encode() + query, headers,
                  b'{"customer_ids":["cust-001"]}'),
      # A limit that fails validation must not answer 422 without a key either.
      raw_request(port, b'GET', path_of('cust-001').encode()
                  + (query + b'&' if query else b'?') + b'limit_recommendations=abc', headers)]
  for status, _, body in answers:
    assert (status, body) == (401, b'{"error":"unauthorized"}')


@pytest.mark.parametrize('headers', [
    b'Authorization: Bearer   ' + K + b' \t\r\n', b'X-API-Key:   ' + K + b'\t \r\n',
    b'Authorization: bearer ' + O + b'\r\n', b'authorization: BEARER ' + K + b'\r\n'])
def test_surrounding_whitespace_and_scheme_case_are_not_part_of_the_key(served, headers):
  # RFC 9110: whitespace around a field value is not part of it, and the scheme is
  # case-insensitive. Accepted, the same way for both headers.
  _, port, _ = served
  status, _, body = raw_request(port, b'GET', path_of('cust-001').encode(), headers)
  assert status == 200 and not leaked(body, 'cust-001')


def routes():
  """(method, path) of every route the app has: a new route is covered here automatically."""
  app = create_app(Settings(project=PROJECT, api_keys=(KEY,))).app
  return sorted((method, route.path) for route in app.routes for method in route.methods)


def test_the_route_enumeration_sees_the_api():
  paths = {path for _, path in routes()}
  assert {PERSONALIZATION, BATCH_GET, '/metrics', '/healthz', '/readyz'} <= paths
  assert set(PUBLIC_PATHS) == {'/healthz', '/readyz'}


@pytest.mark.parametrize('method, path', routes())
def test_no_route_but_health_answers_without_a_key(served, method, path):
  client, _, _ = served
  url = path.format(customer_id='cust-001', key='vip')
  json_body = {'customer_ids': ['cust-001']} if method == 'POST' else None
  anonymous = client.request(method, url, json=json_body)
  keyed = client.request(method, url, json=json_body, headers=bearer())
  if path in PUBLIC_PATHS:
    assert anonymous.status_code == 200
  else:
    assert anonymous.status_code == 401 and anonymous.content == b'{"error":"unauthorized"}'
    # This app has no changes topic: the live stream is off (404 with a reason; with a topic a
    # keyed GET would stream for ever, tests/integration/test_connector_stream.py covers it).
    assert keyed.status_code == (404 if path == '/v1/stream' else 200)
  assert not leaked(anonymous.content)


@pytest.mark.parametrize('path', ['/openapi.json', '/docs', '/redoc', '/docs/oauth2-redirect'])
def test_no_api_description_is_served(served, path):
  client, _, _ = served
  assert client.get(path).status_code == 404
  assert client.get(path, headers=bearer()).status_code == 404


# ---- methods -------------------------------------------------------------------------------------

@pytest.mark.parametrize('method, path', [
    (method, path) for path in (PERSONALIZATION, BATCH_GET, '/metrics', '/healthz')
    for method in ('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD')
    if (method, path) not in {('GET', PERSONALIZATION), ('POST', BATCH_GET), ('GET', '/metrics'),
                              ('GET', '/healthz')}])
def test_unsupported_methods_are_405(served, method, path):
  client, _, _ = served
  url = path.format(customer_id='cust-001', key='vip')
  for headers in ({}, bearer()):
    reply = client.request(method, url, headers=headers, content=b'{"customer_ids":["cust-001"]}')
    assert reply.status_code == 405, (method, path, reply.text)
    assert not leaked(reply.content)


def test_unknown_methods_are_refused(served):
  _, port, _ = served
  for method in (b'TRACE', b'CONNECT', b'PROPFIND', b'BREW'):
    status, _, body = raw(port, method + b' ' + path_of('cust-001').encode()
                          + b' HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n')
    refused(status, body)


# ---- batchGet bodies -----------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs, status', [
    ({'content': b'{"customer_ids":["' + b'c' * 10_000_000 + b'"]}'}, 413),   # 10 MB, declared
    ({'json': {'customer_ids': [f'c{i}' for i in range(1000)]}}, 400),
    ({'json': {'customer_ids': ['cust-001'] * 101}}, 400),                    # 101 before dedupe
    ({'content': b'{not json'}, 400),
    ({'content': b''}, 400),
    ({'content': b'{"customer_ids":["cust-001"]'}, 400),                     # truncated
    ({'content': b'{"customer_ids":["\xff"]}'}, 400),                         # invalid UTF-8
    ({'content': b'\xef\xbb\xbf{"customer_ids":["cust-001"]}'}, 400),          # BOM
    ({'content': b'[' * 10_000 + b']' * 10_000}, 400),                        # deeply nested
    ({'json': [{'customer_ids': ['cust-001']}]}, 400),                        # array, not object
    ({'json': ['cust-001']}, 400),
    ({'json': 'cust-001'}, 400),
    ({'content': b'null'}, 400),
    ({'json': {'customer_ids': 'cust-001'}}, 400),
    ({'json': {'customer_ids': [1, 2]}}, 400),
    ({'json': {'customer_ids': ['cust-001', 7]}}, 400),
    ({'json': {'customer_ids': [['cust-001']]}}, 400),
    ({'json': {'customer_ids': [{'$in': ['cust-001', 'cust-0011']}]}}, 400),
    ({'json': {'customer_ids': [None]}}, 400),
    ({'json': {'customer_ids': []}}, 400),
    ({'json': {'ids': ['cust-001']}}, 400),
    ({'json': {'customer_ids': {'cust-001': True}}}, 400),
    ({'content': b'{"customer_ids":["cust-001"]}', 'headers': {'Content-Type': 'text/plain'}}, 415),
    ({'data': {'customer_ids': 'cust-001'}}, 415),                            # form-encoded
    ({'files': {'customer_ids': ('ids.json', b'["cust-001"]')}}, 415),        # multipart
    ({'content': b'{"customer_ids":["cust-001"]}',
      'headers': {'Content-Type': 'application/xml'}}, 415),
])
def test_batch_get_abuse_is_refused(served, kwargs, status):
  client, _, _ = served
  kwargs = dict(kwargs)
  headers = {**bearer(), **kwargs.pop('headers', {})}
  reply = client.post(BATCH_GET, headers=headers, **kwargs)
  assert reply.status_code == status, reply.text[:300]
  refused(reply.status_code, reply.content)
  assert reply.headers['content-type'] == 'application/json' and len(reply.content) < 300


def test_batch_get_refuses_a_10_mb_chunked_body(served):
  # No Content-Length to check first: the body is read up to the limit, then refused.
  client, _, _ = served

  def chunks():
    for _ in range(160):
      yield b'[' * 65536

  reply = client.post(BATCH_GET, headers=bearer(), content=chunks())
  assert reply.request.headers['transfer-encoding'] == 'chunked'
  assert reply.status_code == 413 and reply.json()['error'] == 'payload_too_large'


def test_batch_get_with_a_bad_content_length_is_refused(served):
  _, port, _ = served
  body = b'{"customer_ids":["cust-001"]}'
  for length in (b'-1', b'abc', b'1e3', b'99999999999999999999999'):
    status, _, answer = raw(port, b'POST ' + BATCH_GET.encode() + b' HTTP/1.1\r\nHost: x\r\n'
                            b'Authorization: Bearer ' + KEY.encode() + b'\r\nContent-Type: '
                            b'application/json\r\nContent-Length: ' + length
                            + b'\r\nConnection: close\r\n\r\n' + body)
    refused(status, answer)


def test_batch_get_returns_only_the_customers_asked_for(served):
  client, _, _ = served
  reply = client.post(BATCH_GET,
                      headers={**bearer(), 'Content-Type': 'application/json; charset=utf-8'},
                      json={'customer_ids': ['cust-001', 'cust-0', 'cust-001 ']})
  assert reply.status_code == 200
  assert list(reply.json()['customers']) == ['cust-001']
  assert reply.json()['not_found'] == ['cust-0', 'cust-001 ']
  assert not leaked(reply.content, 'cust-001')


# ---- query parameters ----------------------------------------------------------------------------

@pytest.mark.parametrize('fields', [
    'email_sha256', 'updated_at', 'schema_version', '__proto__', '../cart', 'cart,email_sha256',
    'cart\x00', 'CART', '*', 'cart,' * 300, ','.join(f'f{i}' for i in range(5000)),
    'x' * 60_000])
def test_fields_unknown_or_huge_are_400_with_a_small_body(served, fields):
  client, _, _ = served
  for reply in (client.get(path_of('cust-001'), headers=bearer(), params={'fields': fields}),
                client.post(BATCH_GET, headers=bearer(), params={'fields': fields},
                            json={'customer_ids': ['cust-001']})):
    refused(reply.status_code, reply.content)
    assert reply.status_code == 400 and len(reply.content) < 500
    assert 'recently_viewed' not in reply.text


def test_duplicate_fields_are_served_once(served):
  client, _, _ = served
  reply = client.get(path_of('cust-001'), headers=bearer(),
                     params={'fields': 'cart,segment,cart, segment ,customer_id'})
  assert reply.status_code == 200
  assert list(reply.json()) == ['cart', 'segment', 'customer_id']  # as asked, each once


@pytest.mark.parametrize('limit', [
    '-1', '-99999999999999999999', '101', str(10**30), 'abc', '1.5', '1e3', '0x10', 'NaN',
    'Infinity', '\x00', '5; DROP TABLE customers'])
def test_limit_recommendations_out_of_range_or_not_a_number_is_4xx(served, limit):
  client, _, _ = served
  reply = client.get(path_of('cust-001'), headers=bearer(),
                     params={'limit_recommendations': limit})
  refused(reply.status_code, reply.content)
  assert reply.status_code in (400, 422)


def test_limit_recommendations_in_range_trims(served):
  client, _, _ = served
  for limit, expected in (('0', 0), ('2', 2), ('100', 4)):
    reply = client.get(path_of('cust-001'), headers=bearer(),
                       params={'limit_recommendations': limit})
    assert reply.status_code == 200 and len(reply.json()['recommendations']) == expected


# ---- logs ----------------------------------------------------------------------------------------

def test_api_keys_never_reach_the_logs(served):
  client, port, log_path = served
  near_misses = [KEY + 'x', KEY[:-1], OTHER_KEY.upper()]
  assert client.get(path_of('cust-001'), headers=bearer()).status_code == 200
  assert client.get(path_of('cust-001'), headers={'X-API-Key': OTHER_KEY}).status_code == 200
  assert client.post(BATCH_GET, headers=bearer(), json={'customer_ids': ['nobody']}
                     ).status_code == 200
  assert client.get('/metrics', headers=bearer()).status_code == 200
  for wrong in near_misses:
    assert client.get(path_of('cust-001'), headers=bearer(wrong)).status_code == 401
  assert client.get(path_of('cust-001'), params={'api_key': KEY}).status_code == 401
  assert client.get(path_of('cust-001'), headers=bearer(),
                    params={'limit_recommendations': KEY}).status_code == 422
  injected, _, _ = raw(port, b'GET ' + path_of('cust-001').encode() + b' HTTP/1.1\r\nHost: x\r\n'
                       b'Authorization: Bearer ' + KEY.encode() + b'\rX: 1\r\nConnection: close'
                       b'\r\n\r\n')
  assert injected == 400
  # The access log line of the last request is written after its response: wait for it.
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline:
    lines = [orjson.loads(line) for line in log_path.read_bytes().splitlines() if line.strip()]
    statuses = {(line.get('endpoint'), line.get('status')) for line in lines}
    if (PERSONALIZATION, 422) in statuses:
      break
    time.sleep(0.1)
  # Every line is a JSON object (the connector's log format), and the requests above are there.
  assert {(PERSONALIZATION, 200), (PERSONALIZATION, 401), (BATCH_GET, 200),
          (PERSONALIZATION, 422)} <= statuses
  assert any('Invalid HTTP request' in line.get('message', '') for line in lines)
  text = log_path.read_text(encoding='utf-8', errors='replace')
  for secret in [KEY, OTHER_KEY] + near_misses:
    assert secret not in text
  # Nor any part of a key long enough to matter.
  assert KEY[:12] not in text and OTHER_KEY[-12:] not in text
