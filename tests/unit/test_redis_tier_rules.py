"""Pure parts of the Redis serving tier: entries, their parsing, the circuit breaker, settings."""
import datetime as dt

import orjson
import pytest

from connector import shaping
from connector.config import ConfigError, RedisSettings, Settings
from connector.redis_tier import Breaker
from transforms.rules import served
from transforms.settings import RedisTier

T = dt.datetime(2026, 11, 14, 23, 58, 36, 407000, tzinfo=dt.timezone.utc)


def test_an_entry_is_the_connectors_plain_answer_with_its_etag():
  document = {'customer_id': 'c1', 'email_sha256': 'ab' * 32, 'last_event_at': T,
              'cart': {'value': 2.0, 'items': []}, 'schema_version': 1, 'version': 7}
  entry = served.entry(document, 7)
  body = orjson.loads(entry.body)
  assert list(body) == list(shaping.served_fields())  # every served field, contract order
  assert 'email_sha256' not in body and 'version' not in body
  assert list(body['cart']) == ['items', 'value']  # nested keys sorted: bytes fixed by content
  assert entry.etag == shaping.etag(entry.body) and entry.version == 7
  assert entry.last_event_at == '2026-11-14T23:58:36.407000Z'
  assert served.entry(None, 9) == served.Entry(9, None, None, None)


def test_parse_reads_entries_and_tombstones_and_refuses_foreign_keys():
  entry = served.entry({'customer_id': 'c1', 'last_event_at': T}, 5)
  fields = {b'v': b'5', b'body': entry.body, b'etag': entry.etag.encode(),
            b'last_event_at': entry.last_event_at.encode()}
  assert served.parse(fields) == entry
  assert served.parse({b'v': b'6', b'deleted': b'1'}) == served.Entry(6, None, None, None)
  for foreign in ({}, {b'v': None, b'body': b'{}'}, {b'v': b'x', b'body': b'{}', b'etag': b'"e"'},
                  {b'v': b'3', b'body': b'{}'}):  # a half-written entry is a miss
    assert served.parse(foreign) is None
  args = entry.redis_args()
  assert args[0] == 5 and args[-1] == 0  # version first, no expiry
  assert served.entry(None, 6).redis_args() == [6, 'deleted', 1, served.TOMBSTONE_SECONDS]


class Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_breaker_opens_after_failures_in_a_row_and_lets_one_trial_through():
  clock = Clock()
  breaker = Breaker(failures=3, open_seconds=5, clock=clock)
  breaker.failure(), breaker.failure(), breaker.success()  # not in a row: stays closed
  breaker.failure(), breaker.failure()
  assert breaker.allow() and not breaker.is_open
  breaker.failure()
  assert breaker.is_open and not breaker.allow()
  clock.now = 4.9
  assert not breaker.allow()
  clock.now = 5.0
  assert breaker.allow()        # the one trial
  assert not breaker.allow()    # everyone else still goes to Firestore meanwhile
  breaker.failure()             # the trial failed: open again, for another interval
  clock.now = 9.9
  assert not breaker.allow()
  clock.now = 10.0
  assert breaker.allow()
  breaker.success()
  assert not breaker.is_open and breaker.allow() and breaker.allow()


BASE = {'CONNECTOR_PROJECT': 'p', 'CONNECTOR_API_KEYS': 'k' * 16}


def test_redis_settings_from_the_environment():
  settings = Settings.from_env({**BASE, 'CONNECTOR_REDIS_URL': 'redis://10.0.0.3:6379/0',
                                'CONNECTOR_REDIS_TIMEOUT_MS': '50'})
  assert settings.redis.timeout_seconds == 0.05 and settings.redis.prefix == served.DEFAULT_PREFIX
  assert settings.cache_ttl_seconds == 0  # no in-process copy in front of Redis
  assert 'redis://' not in repr(settings)  # the URL may hold a password
  assert Settings.from_env(BASE).redis is None and Settings.from_env(BASE).cache_ttl_seconds == 30


@pytest.mark.parametrize('env,message', [
    ({'CONNECTOR_REDIS_URL': 'http://redis:6379'}, 'CONNECTOR_REDIS_URL must be redis://'),
    ({'CONNECTOR_REDIS_URL': 'redis://r:6379', 'CONNECTOR_CACHE_TTL_SECONDS': '30'},
     'CONNECTOR_CACHE_TTL_SECONDS must be 0'),
    ({'CONNECTOR_REDIS_URL': 'redis://r:6379', 'CONNECTOR_REDIS_TIMEOUT_MS': 'fast'},
     'CONNECTOR_REDIS_TIMEOUT_MS must be a number'),
    ({'CONNECTOR_REDIS_URL': 'redis://r:6379', 'CONNECTOR_REDIS_TIMEOUT_MS': '0'},
     'CONNECTOR_REDIS_TIMEOUT_MS must be a number from 1'),
    ({'CONNECTOR_REDIS_URL': 'redis://r:6379', 'CONNECTOR_REDIS_BREAKER_FAILURES': '0'},
     'CONNECTOR_REDIS_BREAKER_FAILURES must be a whole number'),
    ({'CONNECTOR_REDIS_URL': 'redis://r:6379', 'CONNECTOR_REDIS_KEY_PREFIX': 'a b'},
     'CONNECTOR_REDIS_KEY_PREFIX must be non-empty'),
])
def test_bad_redis_settings_name_the_variable(env, message):
  with pytest.raises(ConfigError, match=message):
    Settings.from_env({**BASE, **env})


def test_pipeline_redis_tier_checks_its_options():
  assert 'redis://' not in repr(RedisTier('redis://:secret@r:6379/0'))
  for url in ('', 'r:6379', 'http://r'):
    with pytest.raises(ValueError, match='--redis_url'):
      RedisTier(url)
  with pytest.raises(ValueError, match='--redis_key_prefix'):
    RedisTier('redis://r:6379/0', '')
