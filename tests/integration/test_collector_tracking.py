"""Tracked opens and clicks through `python -m collector` against the Pub/Sub emulator.

Each valid hit publishes exactly one Email Opened / Email Link Clicked event, with `machine` as
the rules say; a bad token publishes nothing, an open still gets its GIF and a click goes to the
landing URL, never to the URL the token names. What was published is read back through a
subscription, up to a sentinel event (tests/integration/test_collector_abuse.py, `Served`).
"""
import base64
import time
import uuid

import httpx
import orjson
import pytest

from collector.app import PIXEL_GIF
from tests.integration.helpers import paused
from tests.integration.test_collector_abuse import KEY, serving
from transforms.rules.tracking import Link, TokenKeys

KEYS = f'k1:{uuid.uuid4().hex}{uuid.uuid4().hex}'
OLD_KEYS = f'k0:{uuid.uuid4().hex}{uuid.uuid4().hex}'
LANDING = 'https://shop.example.com/email-link-expired'
CHROME = ('Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) '
          'Chrome/124.0.0.0 Safari/537.36')
BROWSER = {'User-Agent': CHROME}


@pytest.fixture(scope='module')
def served(local_stack, tmp_path_factory):
  yield from serving(tmp_path_factory, {KEY: 'web'}, {
      'COLLECTOR_TRACKING_KEYS': f'{KEYS},{OLD_KEYS}', 'COLLECTOR_TRACKING_LANDING_URL': LANDING,
      'COLLECTOR_FAST_CLICK_SECONDS': '10', 'COLLECTOR_PUBLISH_TIMEOUT_SECONDS': '2'})


def token(url=None, keys=KEYS, customer='cust-1', age=3600, ttl=86400, email=None):
  now = int(time.time())
  return TokenKeys.parse(keys).sign(Link(customer, 'spring-sale', email or uuid.uuid4().hex[:12],
                                         url, now - age, now - age + ttl))


def get(served, path, method='GET', headers=BROWSER) -> httpx.Response:
  reply = served.client.request(method, path, headers=headers, follow_redirects=False)
  assert reply.status_code < 500, reply.text[:200]
  return reply


def test_a_human_open_publishes_email_opened(served):
  t = token(email='e-open')
  reply = get(served, f'/v1/o/{t}.gif')
  assert reply.status_code == 200 and reply.content == PIXEL_GIF
  assert reply.headers['content-type'] == 'image/gif'
  assert 'no-store' in reply.headers['cache-control']
  [(event, attributes)] = served.published()
  assert attributes['source'] == 'email'
  assert event['type'] == 'track' and event['event'] == 'Email Opened'
  assert event['userId'] == 'cust-1' and event['timestamp'] and event['messageId']
  assert event['properties'] == {'email_id': 'e-open', 'campaign_id': 'spring-sale',
                                 'machine': False, 'machine_reason': None}
  assert event['context']['userAgent'] == CHROME and event['context']['ip'] == '127.0.0.1'


def test_a_human_click_redirects_and_publishes_email_link_clicked(served):
  url = 'https://shop.example.com/p/42?utm_source=email&ü=1'
  reply = get(served, f'/v1/c/{token(url, email="e-click")}')
  assert reply.status_code == 302
  assert reply.headers['location'] == 'https://shop.example.com/p/42?utm_source=email&%C3%BC=1'
  assert reply.headers['referrer-policy'] == 'no-referrer'
  [(event, _)] = served.published()
  assert event['event'] == 'Email Link Clicked'
  assert event['properties'] == {'email_id': 'e-click', 'campaign_id': 'spring-sale',
                                 'link_url': url, 'machine': False, 'machine_reason': None}


def test_tokens_signed_with_the_older_key_of_the_ring_still_work(served):
  reply = get(served, f'/v1/c/{token("https://shop.example.com/old", keys=OLD_KEYS)}')
  assert reply.headers['location'] == 'https://shop.example.com/old'
  assert len(served.published()) == 1


def forged_tokens():
  good = token('https://shop.example.com/p/1')
  kid, payload, signature = good.split('.')
  evil = base64.urlsafe_b64encode(orjson.dumps(
      [1, 'cust-1', 'c', 'e', 'https://evil.example/', 0, 10**12])).rstrip(b'=').decode()
  return {
      'altered payload': f'{kid}.{evil}.{signature}',
      'altered signature': f'{kid}.{payload}.{signature[:-2]}AA',
      'unknown key': token('https://evil.example/', keys=f'kx:{"z" * 40}'),
      'foreign key of the same id': token('https://evil.example/', keys=f'k1:{"z" * 40}'),
      'expired': token('https://evil.example/', age=7200, ttl=3600),
      'an open pixel token': token(None),
      'garbage': 'https:%2F%2Fevil.example',
      'empty': '',
  }


@pytest.mark.parametrize('what', sorted(forged_tokens()))
def test_a_bad_click_token_goes_to_the_landing_url_and_publishes_nothing(served, what):
  bad = forged_tokens()[what]
  before = served.metric('collector_tracking_hits_total', kind='click')
  reply = get(served, f'/v1/c/{bad}')
  assert reply.status_code == 302 and reply.headers['location'] == LANDING
  assert served.published() == []
  assert served.metric('collector_tracking_hits_total', kind='click') == before + 1


@pytest.mark.parametrize('what', ['altered payload', 'unknown key', 'expired', 'garbage'])
def test_a_bad_open_token_still_gets_its_gif_and_publishes_nothing(served, what):
  reply = get(served, f'/v1/o/{forged_tokens()[what]}.gif')
  assert reply.status_code == 200 and reply.content == PIXEL_GIF
  assert served.published() == []


def test_a_click_token_is_no_open_pixel(served):
  reply = get(served, f'/v1/o/{token("https://shop.example.com/")}.gif')
  assert reply.content == PIXEL_GIF and served.published() == []


@pytest.mark.parametrize('method, headers, path_kind, expected', [
    ('HEAD', BROWSER, 'click', 'head_request'),
    ('GET', {'User-Agent': 'Mozilla/5.0'}, 'open', 'apple_mail_privacy'),
    ('GET', {'User-Agent': 'Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 '
                           '(via ggpht.com GoogleImageProxy)'}, 'open', 'image_proxy'),
    ('GET', {'User-Agent': CHROME, 'Sec-Purpose': 'prefetch'}, 'click', 'prefetch'),
    ('GET', {'User-Agent': 'Mozilla/5.0 (compatible; Barracuda Sentinel)'}, 'click',
     'link_scanner'),
])
def test_machine_hits_are_published_with_machine_true(served, method, headers, path_kind,
                                                      expected):
  url = 'https://shop.example.com/p/9'
  path = f'/v1/o/{token(None)}.gif' if path_kind == 'open' else f'/v1/c/{token(url)}'
  reply = get(served, path, method, headers)
  assert reply.status_code == (200 if path_kind == 'open' else 302)
  if method == 'HEAD':
    assert reply.content == b''
  [(event, _)] = served.published()
  assert event['properties']['machine'] is True
  assert event['properties']['machine_reason'] == expected


def test_a_click_seconds_after_the_send_or_the_first_open_is_a_scanners(served):
  url = 'https://shop.example.com/p/3'
  just_sent = token(url, age=0)
  assert get(served, f'/v1/c/{just_sent}').headers['location'] == url
  # An email opened now: a click on one of its links right after is a scanner's too.
  email = f'e-{uuid.uuid4().hex[:8]}'
  opened = get(served, f'/v1/o/{token(None, email=email)}.gif')
  assert opened.status_code == 200
  get(served, f'/v1/c/{token(url, email=email)}')
  published = served.published()
  reasons = [(e['event'], e['properties']['machine_reason']) for e, _ in published]
  assert reasons == [('Email Link Clicked', 'fast_click'), ('Email Opened', None),
                     ('Email Link Clicked', 'fast_click')], reasons


def test_with_pubsub_down_a_click_still_redirects_and_an_open_says_503(served, local_stack_dir):
  url = 'https://shop.example.com/p/5'
  with paused(local_stack_dir, 'pubsub'):
    click = get(served, f'/v1/c/{token(url)}')
    opened = served.client.get(f'/v1/o/{token(None)}.gif', headers=BROWSER)
  assert click.status_code == 302 and click.headers['location'] == url
  assert opened.status_code == 503 and opened.content == PIXEL_GIF
  assert served.metric('collector_events_refused_total', reason='unavailable') >= 2
