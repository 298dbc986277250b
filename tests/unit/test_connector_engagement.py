"""The connector's engagement parts that need no I/O: settings of tracking and holdout, the
both-or-neither send parameters, tracking URLs and click_url per item, the exposure event."""
import hashlib

import pytest

import schemas
from connector import engagement, shaping
from connector.config import ConfigError, Settings
from transforms.rules.holdout import Holdout
from transforms.rules.tracking import TokenKeys

SECRET = 's' * 32
BASE = {'CONNECTOR_PROJECT': 'p', 'CONNECTOR_API_KEYS': 'k' * 20}
NOW = 1_790_000_000
SEND = engagement.Send('spring-sale', 'e-1')


def test_tracking_and_holdout_settings_from_the_environment(tmp_path):
  key_file = tmp_path / 'tracking-keys'
  key_file.write_text(f'# old key, still verifies\nold:{"o" * 32}\n')
  settings = Settings.from_env({
      **BASE, 'CONNECTOR_TRACKING_KEYS': f'new:{SECRET}',
      'CONNECTOR_TRACKING_KEYS_FILE': str(key_file),
      'CONNECTOR_TRACKING_BASE_URL': 'https://t.example.com/base//',
      'CONNECTOR_TRACKING_TTL_DAYS': '30', 'CONNECTOR_HOLDOUT_PERCENT': '12.5',
      'CONNECTOR_HOLDOUT_SALT': 'spring', 'CONNECTOR_EVENTS_TOPIC': 'projects/p/topics/events',
      'CONNECTOR_EXPOSURES_COLLECTION': 'held_out'})
  assert settings.tracking_keys.signing == 'new' and set(settings.tracking_keys.secrets) == {
      'new', 'old'}
  assert settings.tracking_base_url == 'https://t.example.com/base'
  assert settings.tracking_ttl_seconds == 30 * 86_400
  assert settings.holdout == Holdout(12.5, 'spring')
  assert (settings.events_topic, settings.exposures_collection) == (
      'projects/p/topics/events', 'held_out')
  assert SECRET not in repr(settings) and 'o' * 32 not in repr(settings)


def test_engagement_settings_default_to_off():
  settings = Settings.from_env(BASE)
  assert settings.tracking_keys is None and settings.tracking_base_url is None
  assert settings.tracking_ttl_days == 90 and settings.holdout == Holdout(0, 'global-control')
  assert settings.events_topic is None and settings.exposures_collection == 'exposures'


@pytest.mark.parametrize('env, words', [
    ({'CONNECTOR_TRACKING_KEYS': 'no-secret'}, 'CONNECTOR_TRACKING_KEYS: entry 1'),
    ({'CONNECTOR_TRACKING_KEYS': 'k1:short', 'CONNECTOR_TRACKING_BASE_URL': 'https://t.io'},
     'CONNECTOR_TRACKING_KEYS: entry 1 .k1.: a secret is at least 32'),
    ({'CONNECTOR_TRACKING_KEYS_FILE': '/nonexistent'}, 'CONNECTOR_TRACKING_KEYS_FILE'),
    ({'CONNECTOR_TRACKING_KEYS': f'k1:{SECRET}'}, 'CONNECTOR_TRACKING_BASE_URL'),
    ({'CONNECTOR_TRACKING_KEYS': f'k1:{SECRET}', 'CONNECTOR_TRACKING_BASE_URL': 't.example.com'},
     'CONNECTOR_TRACKING_BASE_URL must be an absolute'),
    ({'CONNECTOR_TRACKING_KEYS': f'k1:{SECRET}', 'CONNECTOR_TRACKING_BASE_URL': 'ftp://t.io'},
     'CONNECTOR_TRACKING_BASE_URL'),
    ({'CONNECTOR_TRACKING_KEYS': f'k1:{SECRET}', 'CONNECTOR_TRACKING_BASE_URL': 'https://t.io/?a=1'},
     'CONNECTOR_TRACKING_BASE_URL'),
    ({'CONNECTOR_TRACKING_KEYS': f'k1:{SECRET},k1:{SECRET}', 'CONNECTOR_TRACKING_BASE_URL':
      'https://t.io'}, 'k1 appears twice'),
    ({'CONNECTOR_TRACKING_TTL_DAYS': '0'}, 'CONNECTOR_TRACKING_TTL_DAYS'),
    ({'CONNECTOR_TRACKING_TTL_DAYS': '1.5'}, 'CONNECTOR_TRACKING_TTL_DAYS'),
    ({'CONNECTOR_HOLDOUT_PERCENT': 'ten'}, 'CONNECTOR_HOLDOUT_PERCENT'),
    ({'CONNECTOR_HOLDOUT_PERCENT': '51', 'CONNECTOR_EVENTS_TOPIC': 'projects/p/topics/t'},
     'CONNECTOR_HOLDOUT_PERCENT'),
    ({'CONNECTOR_HOLDOUT_PERCENT': '0.001', 'CONNECTOR_EVENTS_TOPIC': 'projects/p/topics/t'},
     'CONNECTOR_HOLDOUT_PERCENT'),
    ({'CONNECTOR_HOLDOUT_PERCENT': 'nan'}, 'CONNECTOR_HOLDOUT_PERCENT'),
    ({'CONNECTOR_HOLDOUT_PERCENT': '10'}, 'CONNECTOR_EVENTS_TOPIC'),
    ({'CONNECTOR_EVENTS_TOPIC': 'events'}, 'CONNECTOR_EVENTS_TOPIC must be projects/P/topics/T'),
    ({'CONNECTOR_EXPOSURES_COLLECTION': 'a/b'}, 'CONNECTOR_EXPOSURES_COLLECTION'),
])
def test_engagement_settings_errors_name_the_variable(env, words):
  with pytest.raises(ConfigError, match=words):
    Settings.from_env({**BASE, **env})


def test_settings_built_by_hand_keep_the_same_rules():
  with pytest.raises(ConfigError, match='CONNECTOR_EVENTS_TOPIC'):
    Settings(project='p', holdout=Holdout(10))
  with pytest.raises(ConfigError, match='CONNECTOR_TRACKING_BASE_URL'):
    Settings(project='p', tracking_keys=TokenKeys.parse(f'k:{SECRET}'))
  assert Settings(project='p', tracking_keys=TokenKeys.parse(f'k:{SECRET}'),
                  tracking_base_url='http://127.0.0.1:9/').tracking_base_url == 'http://127.0.0.1:9'


@pytest.mark.parametrize('campaign_id, email_id', [
    ('c', None), (None, 'e'), ('', 'e'), ('c', ''), ('c' * 257, 'e'), ('c', 'e' * 257),
    ('c\nx', 'e'), ('c', 'e\x00'), ('c', '\t')])
def test_campaign_and_email_go_together_and_are_printable(campaign_id, email_id):
  with pytest.raises(shaping.BadRequest):
    engagement.parse_send(campaign_id, email_id)


def test_parse_send_both_or_neither():
  assert engagement.parse_send(None, None) is None
  assert engagement.parse_send('c' * 256, 'e é/?') == engagement.Send('c' * 256, 'e é/?')


def tracking():
  return engagement.Tracking(TokenKeys.parse(f'k1:{SECRET},k0:{"z" * 32}'), 'https://t.io',
                             86_400)


def token_of(url, prefix, suffix=''):
  assert url.startswith(prefix) and url.endswith(suffix)
  return url[len(prefix):len(url) - len(suffix)]


def test_open_pixel_and_click_urls_carry_signed_links():
  keys = TokenKeys.parse(f'k0:{"z" * 32},k1:{SECRET}')  # verifies with the whole ring
  pixel = tracking().open_pixel('c1', SEND, NOW)
  link = keys.verify(token_of(pixel, 'https://t.io/v1/o/', '.gif'), NOW + 1)
  assert (link.customer_id, link.campaign_id, link.email_id, link.url) == (
      'c1', 'spring-sale', 'e-1', None)
  assert (link.issued_at, link.expires_at) == (NOW, NOW + 86_400)
  click = tracking().click_url('c1', SEND, 'https://shop.example/p/1?x=1', NOW)
  assert keys.verify(token_of(click, 'https://t.io/v1/c/'), NOW).url == (
      'https://shop.example/p/1?x=1')


@pytest.mark.parametrize('url', [None, '', 'javascript:alert(1)', '//evil.example/x', '/p/1',
                                 'https://a b.example/', 42, 'https://x.io/' + 'a' * 2100])
def test_no_click_url_for_a_missing_or_unsafe_url(url):
  assert tracking().click_url('c1', SEND, url, NOW) is None


def test_decorate_adds_a_click_url_to_every_item_and_the_pixel_without_changing_the_input():
  document = {'customer_id': 'c1', 'holdout': False,
              'recommendations': [{'product_id': 'r1', 'url': 'https://shop.example/r1'},
                                  {'product_id': 'r2', 'url': None}, {'product_id': 'r3'}],
              'recently_viewed': [{'product_id': 'p1', 'url': 'javascript:x'}],
              'cart': {'items': [{'product_id': 'p2', 'url': 'https://shop.example/p2'}]}}
  before = repr(document)
  body = tracking().decorate(document, 'c1', SEND, NOW)
  assert repr(document) == before
  assert [bool(item['click_url']) for item in body['recommendations']] == [True, False, False]
  assert body['recently_viewed'][0]['click_url'] is None
  assert body['recommendations'][0]['click_url'].startswith('https://t.io/v1/c/')
  assert 'click_url' not in body['cart']['items'][0]
  assert body['tracking']['open_pixel'].startswith('https://t.io/v1/o/')
  assert list(body)[:2] == ['customer_id', 'holdout']
  projected = tracking().decorate({'customer_id': 'c1', 'recommendations': None}, 'c1', SEND, NOW)
  assert projected['recommendations'] is None and 'recently_viewed' not in projected


def test_exposure_event_is_a_valid_segment_track_with_a_deterministic_message_id():
  event = engagement.exposure_event('c1', SEND, NOW + 0.25)
  digest = hashlib.sha256(b'["spring-sale","c1"]').hexdigest()
  assert event == {'type': 'track', 'event': 'Email Held Out', 'userId': 'c1',
                   'messageId': 'held-out-' + digest[:40],
                   'timestamp': '2026-09-21T14:13:20.250000Z',
                   'properties': {'campaign_id': 'spring-sale', 'email_id': 'e-1'}}
  assert engagement.exposure_key('spring-sale', 'c1') == digest
  schemas.segment_event_validator()(event)
  again = engagement.exposure_event('c1', engagement.Send('spring-sale', 'e-2'), NOW + 99)
  assert again['messageId'] == event['messageId']  # one exposure per customer and campaign
  assert engagement.exposure_event('c1', engagement.Send('summer', 'e-1'), NOW)['messageId'] != (
      event['messageId'])
  data, attributes = engagement.exposure_message(event)
  assert attributes == {'source': 'connector'} and data.startswith(b'{"type":"track"')
