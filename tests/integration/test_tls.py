"""HTTPS on the services' own listeners: `python -m collector` and `python -m connector` as
deployed, each started once with a self-signed certificate made here (tests/unit/test_tls.py),
against the session's emulators.

Clients verify against that certificate (and only it); a plain-HTTP request to the same port and
a client that does not trust the certificate both fail. The loop closes over HTTPS: the connector,
whose tracking base URL is the collector's https:// address, signs an open pixel into a send; the
pixel, fetched over HTTPS from the collector, publishes its Email Opened event.
"""
import os
import socket
import ssl
import subprocess
import sys
import time
import uuid

import httpx
import orjson
import pytest
from google.cloud import firestore

from collector.app import PIXEL_GIF
from scripts import collect, localstack, publish
from scripts.demo_connector import free_port
from tests.integration.test_collector_abuse import Subscription, basic
from tests.integration.test_connector_api import document
from tests.unit.test_tls import certificate, client_context

PROJECT = 'demo-local'
WRITE_KEY = f'wk_tls_{uuid.uuid4().hex[:16]}'
API_KEY = f'k-tls-{uuid.uuid4().hex}'
TRACKING_KEYS = f'k1:{uuid.uuid4().hex}{uuid.uuid4().hex}'
CUSTOMER = 'c-tls-1'


def wait_https(base: str, process: subprocess.Popen, verify: ssl.SSLContext, log,
               seconds: float = 30) -> None:
  """Until `base`/healthz answers 200 over HTTPS; fails the test with the log's tail if the
  process exits first or time runs out."""
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline and process.poll() is None:
    try:
      if httpx.get(base + '/healthz', verify=verify, timeout=1).status_code == 200:
        return
    except httpx.TransportError:
      time.sleep(0.1)
  pytest.fail(f'{base} never answered over HTTPS (exit {process.poll()}):\n'
              + '\n'.join(localstack.tail_lines(log, 30)))


@pytest.fixture(scope='module')
def cert(tmp_path_factory):
  return certificate(tmp_path_factory.mktemp('tls'))


@pytest.fixture(scope='module')
def trust(cert):
  return client_context(cert)


@pytest.fixture(scope='module')
def collector(local_stack, tmp_path_factory, cert, trust):
  """`python -m collector` serving HTTPS with tracked opens, publishing to a topic of its own
  (with a subscription that shows what was published). It must exit 0 on SIGTERM at the end."""
  name = f'tls{uuid.uuid4().hex[:10]}'
  _, subscription = publish.ensure_topic_and_subscription(PROJECT, name, f'{name}-sub')
  log = tmp_path_factory.mktemp('collector') / 'collector.log'
  port = free_port()
  process = collect.start_collector(log, PROJECT, name, {WRITE_KEY: 'web'}, port, {
      **os.environ, 'COLLECTOR_TLS_CERT_FILE': cert.cert_file,
      'COLLECTOR_TLS_KEY_FILE': cert.key_file, 'COLLECTOR_TRACKING_KEYS': TRACKING_KEYS,
      'COLLECTOR_TRACKING_LANDING_URL': 'https://shop.example.com/'})
  try:
    wait_https(f'https://127.0.0.1:{port}', process, trust, log)
    with httpx.Client(base_url=f'https://127.0.0.1:{port}', verify=trust, timeout=30) as client:
      yield {'client': client, 'port': port, 'subscription': Subscription(subscription)}
  finally:
    code = collect.stop_collector(process)
  assert code == 0, '\n'.join(localstack.tail_lines(log, 30))


@pytest.fixture(scope='module')
def connector(local_stack, tmp_path_factory, cert, trust, collector):
  """`python -m connector` serving HTTPS on a collection with one customer, signing tracking
  URLs for the collector's https:// address."""
  collection = f'tls{uuid.uuid4().hex[:10]}'
  seeded = document(CUSTOMER)
  for item in seeded['recommendations']:
    item['url'] = f'https://shop.example.com/p/{item["product_id"]}'
  firestore.Client(project=PROJECT).collection(collection).document(CUSTOMER).set(seeded)
  log = tmp_path_factory.mktemp('connector') / 'connector.log'
  port = free_port()
  with open(log, 'wb') as out:
    process = subprocess.Popen(
        [sys.executable, '-m', 'connector'], stdout=out, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, 'CONNECTOR_PROJECT': PROJECT, 'CONNECTOR_COLLECTION': collection,
             'CONNECTOR_API_KEYS': API_KEY, 'CONNECTOR_PORT': str(port),
             'CONNECTOR_TLS_CERT_FILE': cert.cert_file, 'CONNECTOR_TLS_KEY_FILE': cert.key_file,
             'CONNECTOR_TRACKING_KEYS': TRACKING_KEYS,
             'CONNECTOR_TRACKING_BASE_URL': f'https://127.0.0.1:{collector["port"]}'})
  try:
    wait_https(f'https://127.0.0.1:{port}', process, trust, log)
    with httpx.Client(base_url=f'https://127.0.0.1:{port}', verify=trust, timeout=30,
                      headers={'Authorization': f'Bearer {API_KEY}'}) as client:
      yield {'client': client, 'port': port}
  finally:
    process.terminate()
    process.wait(timeout=15)


def negotiated(port: int, context: ssl.SSLContext) -> str:
  """The TLS version a handshake with the server on `port` agrees on."""
  with socket.create_connection(('127.0.0.1', port), timeout=10) as raw:
    with context.wrap_socket(raw, server_hostname='127.0.0.1') as wrapped:
      return wrapped.version()


def check_https_only(port: int, cert) -> None:
  """The server on `port` speaks TLS 1.3 and 1.2 to a client that trusts `cert`; plain HTTP
  and a client that does not trust it both fail."""
  assert negotiated(port, client_context(cert)) == 'TLSv1.3'
  assert negotiated(port, client_context(cert, ssl.TLSVersion.TLSv1_2)) == 'TLSv1.2'
  with pytest.raises(httpx.TransportError):
    httpx.get(f'http://127.0.0.1:{port}/healthz', timeout=5)
  # A client with the system's trust store (the default) does not know the self-signed
  # certificate: the check the other requests pass is a real one.
  with pytest.raises(httpx.ConnectError, match='CERTIFICATE_VERIFY_FAILED'):
    httpx.get(f'https://127.0.0.1:{port}/healthz', timeout=5)


def test_the_collector_serves_https_only(collector, cert):
  check_https_only(collector['port'], cert)


def test_the_connector_serves_https_only(connector, cert):
  check_https_only(connector['port'], cert)
  assert connector['client'].get('/readyz').status_code == 200


def test_an_event_posted_over_https_is_published(collector):
  message_id = f'tls-{uuid.uuid4().hex}'
  reply = collector['client'].post('/v1/track', headers=basic(WRITE_KEY), content=orjson.dumps(
      {'messageId': message_id, 'userId': CUSTOMER, 'event': 'Product Viewed'}))
  assert reply.status_code == 200, reply.text
  [(event, _)] = [m for m in collector['subscription'].pull_ids([message_id])
                  if m[0].get('messageId') == message_id]
  assert event['userId'] == CUSTOMER and event['event'] == 'Product Viewed'


def test_the_connector_signs_https_tracking_urls_that_the_collector_serves(connector, collector):
  reply = connector['client'].get(f'/v1/customers/{CUSTOMER}/personalization',
                                  params={'campaign_id': 'tls-campaign', 'email_id': 'e-tls'})
  assert reply.status_code == 200, reply.text
  body = reply.json()
  base = f'https://127.0.0.1:{collector["port"]}'
  pixel = body['tracking']['open_pixel']
  assert pixel.startswith(base + '/v1/o/') and pixel.endswith('.gif')
  assert all(item['click_url'].startswith(base + '/v1/c/') for item in body['recommendations'])
  opened = collector['client'].get(pixel, headers={'User-Agent': 'Mozilla/5.0 (X11; Linux) '
                                                                  'Chrome/124.0 Safari/537.36'})
  assert opened.status_code == 200 and opened.content == PIXEL_GIF
  events = collector['subscription'].pull_until(
      lambda got: any(e.get('event') == 'Email Opened' for e, _ in got))
  [opened_event] = [e for e, _ in events if e.get('event') == 'Email Opened']
  assert opened_event['userId'] == CUSTOMER
  assert opened_event['properties']['campaign_id'] == 'tls-campaign'
  assert opened_event['properties']['email_id'] == 'e-tls'
