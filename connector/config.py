"""Connector settings from the environment (12-factor), validated once. API keys and tracking
secrets are never logged or repr'd."""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import urllib.parse

from connector import tls as tls_files
from transforms.rules import served
from transforms.rules.holdout import DEFAULT_SALT, Holdout
from transforms.rules.tracking import KeyRingError, TokenKeys, safe_url

_TOPIC = re.compile(r'projects/[^/\s]+/topics/[^/\s]+')
_SECONDS_PER_DAY = 86_400


class ConfigError(Exception):
  """A setting is missing or malformed; the message says which and how to fix it."""


@dataclasses.dataclass(frozen=True)
class StreamSettings:
  """The live change stream, GET /v1/stream (docs/CONNECTOR.md, "Live change stream"): off
  without a topic. `queue` also bounds the messages held unacknowledged (connector/stream.py)."""
  topic: str | None = None
  buffer: int = 10_000
  queue: int = 1_000
  heartbeat_seconds: float = 15.0
  max_subscribers: int = 100

  def __post_init__(self):
    if self.topic is not None and not _TOPIC.fullmatch(self.topic):
      raise ConfigError(f'CONNECTOR_CHANGES_TOPIC must be projects/P/topics/T (the pipeline\'s '
                        f'--profile_changes_topic), got {self.topic[:200]!r}')
    for name, value, low, high in (('CONNECTOR_STREAM_BUFFER', self.buffer, 1, 1_000_000),
                                   ('CONNECTOR_STREAM_QUEUE', self.queue, 10, 100_000),
                                   ('CONNECTOR_STREAM_MAX_SUBSCRIBERS', self.max_subscribers, 1,
                                    10_000)):
      if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f'{name} must be a whole number from {low} to {high}, got {value!r}')
    seconds = self.heartbeat_seconds
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
        0.1 <= seconds <= 3600):
      raise ConfigError(f'CONNECTOR_STREAM_HEARTBEAT_SECONDS must be from 0.1 to 3600 seconds, '
                        f'got {seconds!r}')

  @classmethod
  def from_env(cls, env) -> 'StreamSettings':
    number = functools.partial(_env_number, env)
    return cls(topic=env.get('CONNECTOR_CHANGES_TOPIC') or None,
               buffer=number('CONNECTOR_STREAM_BUFFER', '10000', int),
               queue=number('CONNECTOR_STREAM_QUEUE', '1000', int),
               heartbeat_seconds=number('CONNECTOR_STREAM_HEARTBEAT_SECONDS', '15', float),
               max_subscribers=number('CONNECTOR_STREAM_MAX_SUBSCRIBERS', '100', int))


@dataclasses.dataclass(frozen=True)
class RedisSettings:
  """The Redis serving tier (docs/OPERATIONS.md, "The Redis serving tier"): entries the
  pipeline's Firestore writer puts (its --redis_url), read before Firestore. `timeout_seconds`
  bounds each lookup; after `breaker_failures` failures in a row Redis is skipped for
  `breaker_seconds`, then tried again."""
  url: str = dataclasses.field(repr=False)  # may carry a password
  prefix: str = served.DEFAULT_PREFIX
  timeout_seconds: float = 0.1
  breaker_failures: int = 5
  breaker_seconds: float = 5.0

  def __post_init__(self):
    if not served.is_redis_url(self.url):
      raise ConfigError('CONNECTOR_REDIS_URL must be redis://HOST:PORT/DB (rediss:// for TLS, '
                        'unix:// for a socket), the pipeline\'s --redis_url')
    if not served.is_key_prefix(self.prefix):
      raise ConfigError('CONNECTOR_REDIS_KEY_PREFIX must be non-empty, without spaces (the '
                        'pipeline\'s --redis_key_prefix)')
    for name, value, low, high in (('CONNECTOR_REDIS_TIMEOUT_MS', self.timeout_seconds * 1000,
                                    1, 10_000),
                                   ('CONNECTOR_REDIS_BREAKER_SECONDS', self.breaker_seconds,
                                    0.1, 3600)):
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
          low <= value <= high):
        raise ConfigError(f'{name} must be a number from {low} to {high}, got {value!r}')
    failures = self.breaker_failures
    if isinstance(failures, bool) or not isinstance(failures, int) or not 1 <= failures <= 1000:
      raise ConfigError(f'CONNECTOR_REDIS_BREAKER_FAILURES must be a whole number from 1 to '
                        f'1000, got {failures!r}')

  @classmethod
  def from_env(cls, env) -> 'RedisSettings | None':
    url = env.get('CONNECTOR_REDIS_URL')
    if not url:
      return None
    number = functools.partial(_env_number, env)
    return cls(url=url, prefix=env.get('CONNECTOR_REDIS_KEY_PREFIX') or cls.prefix,
               timeout_seconds=number('CONNECTOR_REDIS_TIMEOUT_MS', '100', float) / 1000,
               breaker_failures=number('CONNECTOR_REDIS_BREAKER_FAILURES', '5', int),
               breaker_seconds=number('CONNECTOR_REDIS_BREAKER_SECONDS', '5', float))


@dataclasses.dataclass(frozen=True)
class Settings:
  project: str
  database: str = '(default)'
  collection: str = 'customers'
  api_keys: tuple[str, ...] = dataclasses.field(default=(), repr=False)
  cache_ttl_seconds: float = 30.0
  host: str = '127.0.0.1'
  port: int = 8080
  max_batch: int = 100
  # HTTPS on the listener itself (CONNECTOR_TLS_CERT_FILE and _KEY_FILE); None: plain HTTP.
  tls: tls_files.Tls | None = None
  # Tracking URLs (docs/CONNECTOR.md, "Tracking, holdout and exposures"): off without keys.
  tracking_keys: TokenKeys | None = dataclasses.field(default=None, repr=False)
  tracking_base_url: str | None = None
  tracking_ttl_days: int = 90
  # The global holdout, the same rule and settings as the pipeline's --holdout_percent/_salt.
  holdout: Holdout = Holdout()
  events_topic: str | None = None
  exposures_collection: str = 'exposures'
  stream: StreamSettings = StreamSettings()
  redis: RedisSettings | None = None

  def __post_init__(self):
    """The rules that tie settings together hold however Settings was built (from_env or by
    hand, as the tests do)."""
    if self.tracking_keys is not None:
      if not self.tracking_base_url:
        raise ConfigError('set CONNECTOR_TRACKING_BASE_URL (the collector\'s public base URL, '
                          'e.g. https://t.example.com) when CONNECTOR_TRACKING_KEYS is set')
      object.__setattr__(self, 'tracking_base_url', base_url(self.tracking_base_url))
    if isinstance(self.tracking_ttl_days, bool) or not isinstance(
        self.tracking_ttl_days, int) or self.tracking_ttl_days <= 0:
      raise ConfigError('CONNECTOR_TRACKING_TTL_DAYS must be a positive whole number of days')
    if self.holdout.threshold > 0 and not self.events_topic:
      raise ConfigError('set CONNECTOR_EVENTS_TOPIC (projects/P/topics/T, the raw events topic) '
                        'when CONNECTOR_HOLDOUT_PERCENT > 0: exposures of held-out customers are '
                        'published there')
    if self.events_topic is not None and not _TOPIC.fullmatch(self.events_topic):
      raise ConfigError(f'CONNECTOR_EVENTS_TOPIC must be projects/P/topics/T, got '
                        f'{self.events_topic[:200]!r}')
    if not self.exposures_collection or '/' in self.exposures_collection:
      raise ConfigError('CONNECTOR_EXPOSURES_COLLECTION must be a collection id (no `/`)')
    if self.redis is not None and self.cache_ttl_seconds > 0:
      # An in-process copy would outlive a newer entry in Redis: with Redis there is none.
      raise ConfigError('CONNECTOR_CACHE_TTL_SECONDS must be 0 (its default) with '
                        'CONNECTOR_REDIS_URL: Redis is the shared cache, and a local copy could '
                        'serve a document older than Firestore\'s')

  @property
  def tracking_ttl_seconds(self) -> int:
    return self.tracking_ttl_days * _SECONDS_PER_DAY

  @classmethod
  def from_env(cls, env=None) -> 'Settings':
    env = os.environ if env is None else env
    project = env.get('CONNECTOR_PROJECT') or env.get('GOOGLE_CLOUD_PROJECT')
    if not project:
      raise ConfigError('set CONNECTOR_PROJECT (or GOOGLE_CLOUD_PROJECT) to the Firestore project')
    keys = [k.strip() for k in env.get('CONNECTOR_API_KEYS', '').split(',') if k.strip()]
    key_file = env.get('CONNECTOR_API_KEYS_FILE')
    if key_file:
      keys += _lines(key_file, 'CONNECTOR_API_KEYS_FILE')
    if not keys:
      raise ConfigError('set CONNECTOR_API_KEYS (comma-separated) or CONNECTOR_API_KEYS_FILE '
                        '(one key per line): every endpoint but health needs a key')
    if any(len(k) < 16 for k in keys):
      raise ConfigError('API keys must be at least 16 characters long')
    redis = RedisSettings.from_env(env)
    try:
      ttl = float(env.get('CONNECTOR_CACHE_TTL_SECONDS') or ('0' if redis else '30'))
      port = int(env.get('CONNECTOR_PORT', '8080'))
    except ValueError as err:
      raise ConfigError(f'CONNECTOR_CACHE_TTL_SECONDS / CONNECTOR_PORT: {err}') from err
    if ttl < 0:
      raise ConfigError('CONNECTOR_CACHE_TTL_SECONDS must be >= 0')
    return cls(project=project, database=env.get('CONNECTOR_DATABASE', '(default)'),
               collection=env.get('CONNECTOR_COLLECTION', 'customers'), api_keys=tuple(keys),
               cache_ttl_seconds=ttl, host=env.get('CONNECTOR_HOST', '127.0.0.1'), port=port,
               tls=_tls(env),
               tracking_keys=_tracking_keys(env),
               tracking_base_url=env.get('CONNECTOR_TRACKING_BASE_URL') or None,
               tracking_ttl_days=_ttl_days(env.get('CONNECTOR_TRACKING_TTL_DAYS') or '90'),
               holdout=_holdout(env), events_topic=env.get('CONNECTOR_EVENTS_TOPIC') or None,
               exposures_collection=env.get('CONNECTOR_EXPOSURES_COLLECTION') or 'exposures',
               stream=StreamSettings.from_env(env), redis=redis)


def _env_number(env, name: str, default: str, kind):
  """Setting `name` of `env` (else `default`) as `kind`, or a ConfigError naming it."""
  raw = env.get(name) or default
  try:
    return kind(raw)
  except ValueError:
    raise ConfigError(f'{name} must be a number, got {raw[:50]!r}') from None


def base_url(raw: str) -> str:
  """The collector's public base URL without trailing slashes, so `<base>/v1/o/...` never has
  `//`: an absolute http(s) URL with a host, no query or fragment."""
  url = raw.strip().rstrip('/')
  parts = urllib.parse.urlsplit(url) if safe_url(url) else None
  if parts is None or parts.query or parts.fragment or '?' in url or '#' in url:
    raise ConfigError(f'CONNECTOR_TRACKING_BASE_URL must be an absolute http(s) URL with a host '
                      f'and no query or fragment (e.g. https://t.example.com), got {raw[:200]!r}')
  return url


def _lines(path_text: str, name: str) -> list[str]:
  """A secrets file: one entry per line, `#` comments and blank lines skipped."""
  path = pathlib.Path(path_text)
  if not path.is_file():
    raise ConfigError(f'{name} {path_text} is not a readable file')
  return [line.strip() for line in path.read_text().splitlines()
          if line.strip() and not line.strip().startswith('#')]


def _tracking_keys(env) -> TokenKeys | None:
  """CONNECTOR_TRACKING_KEYS (`kid:secret,kid:secret`) then CONNECTOR_TRACKING_KEYS_FILE (one
  `kid:secret` a line): the first key listed signs, every one verifies."""
  entries = []
  for name in ('CONNECTOR_TRACKING_KEYS', 'CONNECTOR_TRACKING_KEYS_FILE'):
    value = env.get(name)
    if not value:
      continue
    text = ','.join(_lines(value, name)) if name.endswith('_FILE') else value
    try:
      TokenKeys.parse(text, where=name)
    except KeyRingError as err:
      raise ConfigError(str(err)) from None
    entries.append(text)
  if not entries:
    return None
  try:
    return TokenKeys.parse(','.join(entries),
                           where='CONNECTOR_TRACKING_KEYS and CONNECTOR_TRACKING_KEYS_FILE')
  except KeyRingError as err:
    raise ConfigError(str(err)) from None


def _ttl_days(raw: str) -> int:
  try:
    days = int(raw)
  except ValueError:
    days = 0
  if days <= 0:
    raise ConfigError(f'CONNECTOR_TRACKING_TTL_DAYS must be a positive whole number of days, got '
                      f'{raw[:50]!r}')
  return days


def _holdout(env) -> Holdout:
  raw = env.get('CONNECTOR_HOLDOUT_PERCENT') or '0'
  try:
    percent = float(raw)
    Holdout(percent)
  except ValueError as err:
    raise ConfigError(f'CONNECTOR_HOLDOUT_PERCENT={raw[:50]!r} is refused: it must be a number '
                      f'from 0 to 50 with at most two decimals, as the pipeline\'s '
                      f'--holdout_percent ({err})') from None
  try:
    return Holdout(percent, env.get('CONNECTOR_HOLDOUT_SALT') or DEFAULT_SALT)
  except ValueError as err:
    raise ConfigError(f'CONNECTOR_HOLDOUT_SALT is refused ({err})') from None


def _tls(env) -> tls_files.Tls | None:
  """CONNECTOR_TLS_CERT_FILE and CONNECTOR_TLS_KEY_FILE (PEM), both or neither."""
  try:
    return tls_files.from_settings(env.get('CONNECTOR_TLS_CERT_FILE') or None,
                                   env.get('CONNECTOR_TLS_KEY_FILE') or None,
                                   'CONNECTOR_TLS_CERT_FILE', 'CONNECTOR_TLS_KEY_FILE')
  except tls_files.TlsError as err:
    raise ConfigError(str(err)) from None
