"""Collector settings: environment variables, each mirrored by a flag (the flag wins).

Validated once, here; the rest of the collector trusts them. Write keys are never logged or
repr'd: only the source names they map to appear anywhere else.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import ipaddress
import logging
import os
import pathlib
import re
from typing import Mapping, Sequence

from connector import tls as tls_files
# A source name becomes a Pub/Sub attribute and part of the events table's `source` column: the
# pipeline's own rule for it decides what the collector accepts, so the two cannot disagree.
from transforms.rules.source_tags import is_source_name
from transforms.rules.tracking import KeyRingError, TokenKeys, safe_url

MIN_KEY_LENGTH = 8
# Printable ASCII without spaces or ':' (it travels as a Basic username, which ends at a ':').
_KEY_PATTERN = re.compile(r'[!-9;-~]+')
_log = logging.getLogger('collector')


class ConfigError(Exception):
  """A setting is missing or malformed; the message says which and how to fix it."""


# (environment variable, flag, default, help). One table, so `--help` documents every setting.
_SETTINGS = (
    ('COLLECTOR_PROJECT', '--project', None,
     'Google Cloud project of the topic (falls back to GOOGLE_CLOUD_PROJECT). Required.'),
    ('COLLECTOR_TOPIC', '--topic', None, 'Pub/Sub topic id in that project. Required.'),
    ('COLLECTOR_WRITE_KEYS', '--write-keys', '',
     'Comma-separated key:source pairs, e.g. wk_web_1:web,wk_srv_1:server. A source name is '
     '1-64 of [A-Za-z0-9_.-]; a key is at least 8 printable characters without spaces or colons.'),
    ('COLLECTOR_WRITE_KEYS_FILE', '--write-keys-file', None,
     'A file of key:source lines (# comments), re-read on SIGHUP for rotation; adds to '
     'COLLECTOR_WRITE_KEYS. A file that fails to parse on SIGHUP leaves the old keys in force.'),
    ('COLLECTOR_HOST', '--host', '127.0.0.1', 'Address to listen on.'),
    ('COLLECTOR_PORT', '--port', '8088', 'Port to listen on.'),
    ('COLLECTOR_TLS_CERT_FILE', '--tls-cert-file', None,
     'PEM certificate chain (the server\'s certificate first). With COLLECTOR_TLS_KEY_FILE the '
     'collector serves HTTPS itself, TLS 1.2 and 1.3 only; neither: plain HTTP (behind a '
     'TLS-terminating load balancer). Read once at start-up.'),
    ('COLLECTOR_TLS_KEY_FILE', '--tls-key-file', None,
     'PEM private key of that certificate, unencrypted; required with COLLECTOR_TLS_CERT_FILE.'),
    ('COLLECTOR_ALLOWED_ORIGINS', '--allowed-origins', '',
     'Comma-separated origins browsers may send from (CORS), e.g. https://shop.example.com; '
     '* allows any. Empty: no CORS headers (server-side SDKs need none).'),
    ('COLLECTOR_TRUSTED_PROXIES', '--trusted-proxies', '',
     'Comma-separated addresses or CIDR ranges of proxies whose X-Forwarded-For is believed '
     '(e.g. the load balancer\'s ranges). Empty: context.ip is the TCP peer.'),
    ('COLLECTOR_TRUNCATE_IP', '--truncate-ip', 'false',
     'true: context.ip keeps only its network part (IPv4 /24, IPv6 /48), for privacy.'),
    ('COLLECTOR_PUBLISH_TIMEOUT_SECONDS', '--publish-timeout-seconds', '10',
     'How long a request waits for Pub/Sub to accept its events before answering 503.'),
    ('COLLECTOR_BODY_TIMEOUT_SECONDS', '--body-timeout-seconds', '10',
     'How long a client may take to send a request\'s headers (past it the connection is closed), '
     'and then its body (past it the answer is 408).'),
    ('COLLECTOR_MAX_OUTSTANDING_MB', '--max-outstanding-mb', '64',
     'Event bytes waiting for Pub/Sub at most; beyond that new requests get 503 (bounds memory '
     'while Pub/Sub is slow or down).'),
    ('COLLECTOR_MAX_CONCURRENCY', '--max-concurrency', '1000',
     'Connections and requests in progress at most; beyond that the server answers 503 at once '
     '(bounds memory under a flood of slow clients).'),
    ('COLLECTOR_METRICS_TOKEN', '--metrics-token', None,
     'If set, /metrics needs "Authorization: Bearer <token>".'),
    ('COLLECTOR_TRACKING_KEYS', '--tracking-keys', None,
     'Comma-separated key_id:secret pairs that sign the tracking tokens of open pixels '
     '(/v1/o/TOKEN.gif) and click links (/v1/c/TOKEN); the first signs, all verify (rotation). '
     'The connector signs with the same keys. Unset: tracking URLs are not served.'),
    ('COLLECTOR_TRACKING_LANDING_URL', '--tracking-landing-url', None,
     'Where a click with a forged, altered or expired token is sent (never to the URL it names). '
     'Required with COLLECTOR_TRACKING_KEYS; an absolute http(s) URL.'),
    ('COLLECTOR_TRACKING_SOURCE', '--tracking-source', 'email',
     'Source name of the open and click events (their Pub/Sub `source` attribute).'),
    ('COLLECTOR_FAST_CLICK_SECONDS', '--fast-click-seconds', '10',
     'A click within this many seconds of the email\'s send or first open is a link scanner\'s '
     '(machine: true). 0 turns the rule off.'),
)


@dataclasses.dataclass(frozen=True)
class Settings:
  project: str
  topic: str
  # From COLLECTOR_WRITE_KEYS; the file's keys are read (and checked) too, but held by KeyRing.
  write_keys: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)
  write_keys_file: str | None = None
  host: str = '127.0.0.1'
  port: int = 8088
  tls: tls_files.Tls | None = None
  allowed_origins: tuple[str, ...] = ()
  trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
  truncate_ip: bool = False
  publish_timeout_seconds: float = 10.0
  body_timeout_seconds: float = 10.0
  max_outstanding_bytes: int = 64 << 20
  max_concurrency: int = 1000
  metrics_token: str | None = dataclasses.field(default=None, repr=False)
  tracking: 'Tracking | None' = None

  @property
  def topic_path(self) -> str:
    return f'projects/{self.project}/topics/{self.topic}'

  @classmethod
  def from_sources(cls, argv: Sequence[str] | None = None,
                   env: Mapping[str, str] | None = None) -> 'Settings':
    """Settings from flags over environment variables; ConfigError names the one at fault."""
    env = os.environ if env is None else env
    values = vars(parser().parse_args(argv))
    raw = {}
    for variable, flag, default, _ in _SETTINGS:
      name = flag[2:].replace('-', '_')
      given = values.get(name)
      raw[variable] = given if given is not None else env.get(variable, default)
    project = raw['COLLECTOR_PROJECT'] or env.get('GOOGLE_CLOUD_PROJECT')
    if not project:
      raise ConfigError('set COLLECTOR_PROJECT (or GOOGLE_CLOUD_PROJECT) to the topic\'s project')
    topic = raw['COLLECTOR_TOPIC']
    if not topic:
      raise ConfigError('set COLLECTOR_TOPIC to the Pub/Sub topic id events are published to')
    keys = parse_write_keys(raw['COLLECTOR_WRITE_KEYS'], 'COLLECTOR_WRITE_KEYS')
    key_file = raw['COLLECTOR_WRITE_KEYS_FILE']
    if not keys and not (key_file and read_write_keys_file(key_file)):
      raise ConfigError('set COLLECTOR_WRITE_KEYS (key:source,...) or COLLECTOR_WRITE_KEYS_FILE: '
                        'every tracking request needs a write key')
    return cls(
        project=project, topic=topic, write_keys=keys, write_keys_file=key_file or None,
        host=raw['COLLECTOR_HOST'],
        port=_number(raw, 'COLLECTOR_PORT', int, 1, 65535),
        tls=_tls(raw),
        allowed_origins=tuple(_split(raw['COLLECTOR_ALLOWED_ORIGINS'])),
        trusted_proxies=_networks(raw['COLLECTOR_TRUSTED_PROXIES']),
        truncate_ip=_boolean(raw, 'COLLECTOR_TRUNCATE_IP'),
        publish_timeout_seconds=_number(raw, 'COLLECTOR_PUBLISH_TIMEOUT_SECONDS', float, 0.1, 600),
        body_timeout_seconds=_number(raw, 'COLLECTOR_BODY_TIMEOUT_SECONDS', float, 0.1, 600),
        max_outstanding_bytes=_number(raw, 'COLLECTOR_MAX_OUTSTANDING_MB', int, 1, 65536) << 20,
        max_concurrency=_number(raw, 'COLLECTOR_MAX_CONCURRENCY', int, 1, 1_000_000),
        metrics_token=raw['COLLECTOR_METRICS_TOKEN'] or None,
        tracking=_tracking(raw))


@dataclasses.dataclass(frozen=True)
class Tracking:
  """Tracked opens and clicks (docs/ENGAGEMENT.md): the key ring, the landing URL of refused
  clicks, the source name of the events and the fast-click rule's window."""
  keys: TokenKeys = dataclasses.field(repr=False)
  landing_url: str
  source: str = 'email'
  fast_click_seconds: float = 10.0


def _tracking(raw) -> Tracking | None:
  text = raw['COLLECTOR_TRACKING_KEYS']
  landing = raw['COLLECTOR_TRACKING_LANDING_URL']
  if not text:
    if landing:
      raise ConfigError('COLLECTOR_TRACKING_LANDING_URL is set but COLLECTOR_TRACKING_KEYS is '
                        'not: set both to serve tracking URLs')
    return None
  try:
    keys = TokenKeys.parse(text, 'COLLECTOR_TRACKING_KEYS')
  except KeyRingError as err:
    raise ConfigError(str(err)) from None
  if not landing or not safe_url(landing):
    raise ConfigError('COLLECTOR_TRACKING_LANDING_URL must be an absolute http(s) URL (where a '
                      'click with a bad token goes), required with COLLECTOR_TRACKING_KEYS')
  source = raw['COLLECTOR_TRACKING_SOURCE']
  if not is_source_name(source):
    raise ConfigError(f'COLLECTOR_TRACKING_SOURCE {source!r} is not 1-64 of [A-Za-z0-9_.-]')
  return Tracking(keys, landing, source,
                  _number(raw, 'COLLECTOR_FAST_CLICK_SECONDS', float, 0, 3600))


def parser() -> argparse.ArgumentParser:
  """The command line: one flag per setting, each defaulting to its environment variable."""
  p = argparse.ArgumentParser(
      prog='python -m collector',
      description='Segment- and RudderStack-compatible tracking API publishing to Pub/Sub. Every '
                  'setting is an environment variable, mirrored by a flag that wins over it; '
                  'PUBSUB_EMULATOR_HOST points the Pub/Sub client at the emulator. '
                  'See docs/COLLECTOR.md.')
  for variable, flag, default, text in _SETTINGS:
    shown = f' Default: {default}.' if default not in (None, '') else ''
    p.add_argument(flag, default=None, metavar=variable, help=f'{text} [env {variable}]{shown}')
  return p


def parse_write_keys(text: str, where: str) -> dict[str, str]:
  """`key:source,key:source` (or one pair per line) -> {key: source}."""
  keys = {}
  for n, item in enumerate(_split(text.replace('\n', ',')), 1):
    if item.startswith('#'):
      continue
    key, sep, source = item.partition(':')
    if not sep or not key:
      raise ConfigError(f'{where}: entry {n} is not key:source')
    if len(key) < MIN_KEY_LENGTH or not _KEY_PATTERN.fullmatch(key):
      raise ConfigError(f'{where}: entry {n}: a write key is at least {MIN_KEY_LENGTH} printable '
                        'characters without spaces or colons')
    if not is_source_name(source):
      raise ConfigError(f'{where}: entry {n}: source {source!r} is not 1-64 of [A-Za-z0-9_.-]')
    if key in keys and keys[key] != source:
      raise ConfigError(f'{where}: entry {n}: the same key maps to two sources')
    keys[key] = source
  return keys


def read_write_keys_file(path: str) -> dict[str, str]:
  file = pathlib.Path(path)
  try:
    text = file.read_text()
  except (OSError, UnicodeDecodeError) as err:
    raise ConfigError(f'COLLECTOR_WRITE_KEYS_FILE {path} cannot be read: {err}') from err
  lines = [line.strip() for line in text.splitlines()]
  return parse_write_keys(','.join(line for line in lines if line and not line.startswith('#')),
                          f'COLLECTOR_WRITE_KEYS_FILE {path}')


class KeyRing:
  """The write keys in force: key -> source, swappable at run time (SIGHUP).

  Keys are looked up by the SHA-256 digest of what a request offers, so the lookup's time says
  nothing about how much of a key was right. (The keys from the setting stay in memory as given,
  for reloads; only digests are compared.)
  """

  def __init__(self, fixed: Mapping[str, str], file: str | None = None):
    """`fixed`: keys from the setting, kept across reloads; `file`: a key file, read now."""
    self._file = file
    self._fixed = dict(fixed)
    self._sources = self._digests({**self._fixed, **(read_write_keys_file(file) if file else {})})

  @staticmethod
  def _digests(keys: Mapping[str, str]) -> dict[bytes, str]:
    return {hashlib.sha256(k.encode()).digest(): s for k, s in keys.items()}

  @classmethod
  def from_settings(cls, settings: Settings) -> 'KeyRing':
    return cls(settings.write_keys, settings.write_keys_file)

  def source(self, offered: str | None) -> str | None:
    """The source an offered key maps to, or None (unknown, missing or not text)."""
    if not offered or not isinstance(offered, str):
      return None
    return self._sources.get(hashlib.sha256(offered.encode('utf-8', 'replace')).digest())

  def reload(self) -> bool:
    """Re-reads the key file (SIGHUP). A file that fails to parse leaves the old keys."""
    if not self._file:
      _log.info('SIGHUP: no COLLECTOR_WRITE_KEYS_FILE to re-read')
      return False
    try:
      keys = {**self._fixed, **read_write_keys_file(self._file)}
    except ConfigError as err:
      _log.error('write keys not reloaded, the old ones stay in force: %s', err)
      return False
    if not keys:
      _log.error('write keys not reloaded: the file holds none, the old ones stay in force')
      return False
    self._sources = self._digests(keys)  # one reference swap: readers see old or new, whole
    _log.info('write keys reloaded', extra={'sources': sorted(set(keys.values())),
                                            'keys': len(keys)})
    return True


def _tls(raw) -> tls_files.Tls | None:
  """COLLECTOR_TLS_CERT_FILE and COLLECTOR_TLS_KEY_FILE (PEM), both or neither."""
  try:
    return tls_files.from_settings(raw['COLLECTOR_TLS_CERT_FILE'], raw['COLLECTOR_TLS_KEY_FILE'],
                                   'COLLECTOR_TLS_CERT_FILE', 'COLLECTOR_TLS_KEY_FILE')
  except tls_files.TlsError as err:
    raise ConfigError(str(err)) from None


def _split(text: str) -> list[str]:
  return [item.strip() for item in (text or '').split(',') if item.strip()]


def _number(raw, variable, kind, low, high):
  text = raw[variable]
  try:
    value = kind(text)
  except (TypeError, ValueError):
    raise ConfigError(f'{variable} must be a number, got {text!r}') from None
  if not low <= value <= high:  # also refuses nan
    raise ConfigError(f'{variable} must be between {low} and {high}, got {text}')
  return value


def _boolean(raw, variable) -> bool:
  text = str(raw[variable]).strip().lower()
  if text in ('1', 'true', 'yes', 'on'):
    return True
  if text in ('0', 'false', 'no', 'off', ''):
    return False
  raise ConfigError(f'{variable} must be true or false, got {raw[variable]!r}')


def _networks(text: str) -> tuple:
  networks = []
  for item in _split(text):
    try:
      networks.append(ipaddress.ip_network(item, strict=False))
    except ValueError:
      raise ConfigError(f'COLLECTOR_TRUSTED_PROXIES: {item!r} is not an address or CIDR range'
                        ) from None
  return tuple(networks)
