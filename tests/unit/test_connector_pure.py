"""The connector's pure parts: settings, response shaping, the TTL cache."""
import datetime as dt
import json
import subprocess
import sys
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
  # updated_at and version are the writer's (commit time, transforms/sinks/firestore.py).
  assert set(rendered) | {'updated_at', 'version'} == properties
  assert set(served_document_fields()) <= set(rendered)


def test_raw_decoding_matches_the_firestore_library_then_shaping():
  """The store decodes BatchGetDocuments protobufs itself (for speed); what it yields must equal
  what the library's own decoding gives after shaping, for every value type a document holds."""
  import datetime as dt

  from google.cloud.firestore_v1 import _helpers
  from google.cloud.firestore_v1.types import document as document_types

  from connector import shaping
  from connector.store import decode_fields

  moment = dt.datetime(2026, 11, 29, 3, 4, 5, 123456, tzinfo=dt.timezone.utc)
  whole_second = dt.datetime(1999, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
  stored = {'s': 'Åsa 🛒 שלום', 'i': -(2**62), 'f': 1.5, 'b': True, 'n': None, 't': moment,
            't0': whole_second, 'empty_list': [], 'empty_map': {},
            'nested': {'items': [{'price': 10.0, 'at': moment, 'tags': ['a', None, 3]}]}}
  raw = document_types.Document.pb(document_types.Document(
      fields=_helpers.encode_dict(stored)))
  library = _helpers.decode_dict(document_types.Document(fields=_helpers.encode_dict(stored))
                                 .fields, client=None)
  ours = decode_fields(raw.fields)
  assert ours == shaping.shape(library, list(stored))
  assert ours['t'] == '2026-11-29T03:04:05.123456Z' and ours['t0'] == '1999-01-02T03:04:05Z'
  assert ours['i'] == -(2**62) and ours['n'] is None and ours['empty_map'] == {}


def test_ids_firestore_reserves_and_oversized_projections_are_bad_requests():
  # A reserved id made Firestore fail the whole micro-batched lookup: 503 for every request in it.
  for bad in ('__name__', '__x__', '____', '__a b__'):
    with pytest.raises(shaping.BadRequest, match='reserves'):
      shaping.check_customer_id(bad)
  for fine in ('__', '___', '_x_', '__x', 'x__', 'a__b__'):
    shaping.check_customer_id(fine)
  with pytest.raises(shaping.BadRequest, match='at most'):
    shaping.parse_fields('cart,' * 300)
  assert shaping.parse_fields(','.join(shaping.served_fields())) == shaping.served_fields()


def test_the_server_freezes_what_start_up_made_including_the_lazily_imported_clients():
  # In a child process: freezing is process-wide and would keep this test run's objects forever.
  script = ('import gc, json, sys\n'
            'from connector.__main__ import freeze_startup_objects\n'
            'before = len(gc.get_objects())\n'
            'freeze_startup_objects()\n'
            'print(json.dumps([before, len(gc.get_objects()), gc.get_freeze_count(),\n'
            '                  "google.cloud.firestore" in sys.modules,\n'
            '                  "redis.asyncio" in sys.modules]))\n')
  done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        check=True, timeout=120)
  before, tracked, frozen, firestore_loaded, redis_loaded = json.loads(done.stdout)
  # A collection now walks (almost) nothing start-up made; what is frozen is at least all that
  # the app's imports had made, plus the two client libraries imported for the purpose.
  assert tracked < before / 100
  assert frozen > before
  assert firestore_loaded and redis_loaded
