"""The connector's pure parts: settings, response shaping, the TTL cache."""
import datetime as dt
import time

import pytest

from connector import shaping
from connector.config import ConfigError, Settings
from connector.store import TtlCache


def test_settings_from_environment_with_rotating_keys_and_a_key_file(tmp_path):
  key_file = tmp_path / 'keys'
  key_file.write_text('# rotated in March\nfile-key-0123456789abcdef\n')
  settings = Settings.from_env({'GOOGLE_CLOUD_PROJECT': 'demo-local',
                                'CONNECTOR_API_KEYS': 'env-key-0123456789abcdef, other-key-0123456789ab',
                                'CONNECTOR_API_KEYS_FILE': str(key_file),
                                'CONNECTOR_CACHE_TTL_SECONDS': '5', 'CONNECTOR_PORT': '9000'})
  assert settings.api_keys == ('env-key-0123456789abcdef', 'other-key-0123456789ab',
                               'file-key-0123456789abcdef')
  assert (settings.project, settings.cache_ttl_seconds, settings.port) == ('demo-local', 5.0, 9000)
  assert 'key' not in repr(settings)  # keys never reach logs through repr


@pytest.mark.parametrize('env, words', [
    ({'CONNECTOR_API_KEYS': 'k' * 20}, 'CONNECTOR_PROJECT'),
    ({'CONNECTOR_PROJECT': 'p'}, 'CONNECTOR_API_KEYS'),
    ({'CONNECTOR_PROJECT': 'p', 'CONNECTOR_API_KEYS': 'short'}, 'at least 16'),
    ({'CONNECTOR_PROJECT': 'p', 'CONNECTOR_API_KEYS_FILE': '/nonexistent'}, 'not a readable file'),
    ({'CONNECTOR_PROJECT': 'p', 'CONNECTOR_API_KEYS': 'k' * 20, 'CONNECTOR_PORT': 'x'}, 'PORT'),
])
def test_settings_errors_say_what_to_set(env, words):
  with pytest.raises(ConfigError, match=words):
    Settings.from_env(env)


def test_shape_serves_only_contract_fields_with_iso_times_and_limits():
  t = dt.datetime(2026, 11, 2, 10, 0, 0, 500000, tzinfo=dt.timezone.utc)
  document = {'customer_id': 'c1', 'email_sha256': 'x', 'updated_at': t, 'last_event_at': t,
              'recommendations': [{'product_id': str(i)} for i in range(4)],
              'cart': {'updated_at': t, 'items': []}}
  body = shaping.shape(document, shaping.parse_fields(None), limit_recommendations=1)
  assert 'email_sha256' not in body and 'updated_at' not in body
  assert body['last_event_at'] == '2026-11-02T10:00:00.500000Z'
  assert body['cart']['updated_at'] == '2026-11-02T10:00:00.500000Z'
  assert body['recommendations'] == [{'product_id': '0'}]
  assert body['first_name'] is None  # a served field missing from storage is null, not absent


def test_fields_projection_and_id_checks():
  assert shaping.parse_fields('cart, cart ,segment') == ('customer_id', 'cart', 'segment')
  with pytest.raises(shaping.BadRequest, match='unknown field'):
    shaping.parse_fields('cart,updated_at')
  for bad in ('', 'a/b', '..', 'x' * 257, 'a\r\nb'):
    with pytest.raises(shaping.BadRequest):
      shaping.check_customer_id(bad)
  shaping.check_customer_id('c00001')


def test_etag_changes_with_the_body():
  assert shaping.etag(b'{"a":1}') == shaping.etag(b'{"a":1}') != shaping.etag(b'{"a":2}')


def test_ttl_cache_expires_and_caches_misses():
  cache = TtlCache(ttl=0.05)
  cache.put('c1', {'x': 1})
  cache.put('gone', None)
  assert cache.get('c1') == (True, {'x': 1}) and cache.get('gone') == (True, None)
  time.sleep(0.06)
  assert cache.get('c1') == (False, None)
  assert (cache.hits, cache.misses) == (2, 1)
  off = TtlCache(ttl=0)
  off.put('c1', {'x': 1})
  assert off.get('c1') == (False, None)


def test_the_pipeline_document_matches_the_served_contract():
  from schemas import customer_document_schema, served_document_fields
  from transforms.rules import profile
  rendered = profile.render(profile.new_state('c1'), 0)
  properties = set(customer_document_schema()['properties'])
  assert set(rendered) | {'updated_at'} == properties
  assert set(served_document_fields()) <= set(rendered)
