"""The sync worker's configuration file (YAML), validated once into frozen settings.

Every problem is reported with the key it is about; API keys are read from the environment
variables the file names, and are never logged, repr'd or written to a dead letter.
"""
from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
from typing import Any, Mapping

import yaml

from connector.config import ConfigError

_SUBSCRIPTION = re.compile(r'projects/([^/\s]+)/subscriptions/[^/\s]+')
_TOPIC = re.compile(r'projects/[^/\s]+/topics/[^/\s]+')
_NAME = re.compile(r'[a-z][a-z0-9_-]{0,62}')
_ENV = re.compile(r'[A-Z_][A-Z0-9_]*')
_LISTEN = re.compile(r'(?P<host>[^\s:]+):(?P<port>\d{1,5})')
# The fields a mapping can name: the flattened document fields of a profile change
# (schemas/profile_change.schema.json): `name` or `parent.member`.
_FIELD = re.compile(r'[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_][A-Za-z0-9_\-]*)?')
TYPES = ('braze', 'klaviyo', 'iterable')
ALL_AUDIENCES = '*'


@dataclasses.dataclass(frozen=True)
class RateLimit:
  """A token bucket: at most `burst + requests_per_second * T` requests in any T seconds."""
  requests_per_second: float
  burst: int = 1


@dataclasses.dataclass(frozen=True)
class Destination:
  name: str
  type: str
  base_url: str
  api_key_env: str
  api_key: str = dataclasses.field(repr=False, compare=False)
  fields: tuple[tuple[str, str], ...]        # (document field, ESP attribute), in file order
  audiences: tuple[str, ...] | str           # audience keys, or ALL_AUDIENCES
  audience_attribute: str                    # e.g. 'audience_{key}'
  rate_limit: RateLimit | None               # None: unlimited (benchmarks only)
  timeout_seconds: float = 10.0
  max_attempts: int = 8
  backoff_seconds: float = 0.5
  backoff_max_seconds: float = 60.0
  options: tuple[tuple[str, Any], ...] = ()

  def attribute_of_audience(self, key: str) -> str:
    return self.audience_attribute.format(key=key)

  def receives(self, audience: str) -> bool:
    return self.audiences == ALL_AUDIENCES or audience in self.audiences


@dataclasses.dataclass(frozen=True)
class SyncConfig:
  subscription: str
  dead_letter_topic: str
  destinations: tuple[Destination, ...]
  project: str
  database: str = '(default)'
  state_collection: str = 'sync_state'
  documents_collection: str = 'customers'   # read by --backfill only
  batch_seconds: float = 1.0
  max_batch: int = 1000
  ack_deadline_seconds: int = 60
  listen: tuple[str, int] = ('127.0.0.1', 9464)


def _require(mapping: Mapping, key: str, where: str) -> Any:
  if key not in mapping or mapping[key] in (None, ''):
    raise ConfigError(f'{where}: `{key}` is required')
  return mapping[key]


def _number(value: Any, where: str, *, minimum: float = 0.0, integer: bool = False,
            strict: bool = True) -> float:
  kind = int if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
    raise ConfigError(f'{where} must be a {"whole " if integer else ""}number, got {value!r}')
  if value < minimum or (strict and value == minimum):
    raise ConfigError(f'{where} must be {">" if strict else ">="} {minimum}, got {value!r}')
  return value


def _known(mapping: Mapping, allowed: set[str], where: str) -> None:
  unknown = sorted(set(mapping) - allowed)
  if unknown:
    raise ConfigError(f'{where}: unknown key(s) {", ".join(map(str, unknown))}; allowed: '
                      f'{", ".join(sorted(allowed))}')


def _rate_limit(raw: Any, where: str) -> RateLimit | None:
  if raw in ('none', 'unlimited'):
    return None
  if not isinstance(raw, Mapping):
    raise ConfigError(f'{where}.rate_limit must be {{requests_per_second: N, burst: B}} or '
                      f'"unlimited", got {raw!r}')
  _known(raw, {'requests_per_second', 'burst'}, f'{where}.rate_limit')
  rps = _number(_require(raw, 'requests_per_second', f'{where}.rate_limit'),
                f'{where}.rate_limit.requests_per_second')
  burst = _number(raw.get('burst', 1), f'{where}.rate_limit.burst', minimum=1, integer=True,
                  strict=False)
  return RateLimit(float(rps), int(burst))


def _destination(raw: Any, index: int, env: Mapping[str, str]) -> Destination:
  where = f'destinations[{index}]'
  if not isinstance(raw, Mapping):
    raise ConfigError(f'{where} must be a mapping')
  _known(raw, {'name', 'type', 'base_url', 'api_key_env', 'fields', 'audiences',
               'audience_attribute', 'rate_limit', 'timeout_seconds', 'max_attempts',
               'backoff_seconds', 'backoff_max_seconds', 'options'}, where)
  name = str(_require(raw, 'name', where))
  if not _NAME.fullmatch(name):
    raise ConfigError(f'{where}.name {name!r}: lower-case letters, digits, - and _, starting '
                      'with a letter (it names the destination in metrics and state)')
  where = f'destination {name!r}'
  kind = _require(raw, 'type', where)
  if kind not in TYPES:
    raise ConfigError(f'{where}: type {kind!r} is not one of {", ".join(TYPES)}')
  base_url = str(_require(raw, 'base_url', where)).rstrip('/')
  if not re.fullmatch(r'https?://[^\s/?#]+(/[^\s?#]*)?', base_url):
    raise ConfigError(f'{where}: base_url {base_url!r} must be an http(s) URL without query')
  key_env = str(_require(raw, 'api_key_env', where))
  if not _ENV.fullmatch(key_env):
    raise ConfigError(f'{where}: api_key_env {key_env!r} must name an environment variable')
  api_key = env.get(key_env, '').strip()
  if not api_key:
    raise ConfigError(f'{where}: the environment variable {key_env} (its API key) is not set')
  fields = raw.get('fields') or {}
  if not isinstance(fields, Mapping):
    raise ConfigError(f'{where}.fields must map document fields to ESP attribute names')
  mapped = []
  for field, attribute in fields.items():
    if not isinstance(field, str) or not _FIELD.fullmatch(field):
      raise ConfigError(f'{where}.fields: {field!r} is not a document field (`segment`, '
                        '`orders.lifetime_value`, `traits.<name>`)')
    if not isinstance(attribute, str) or not attribute.strip():
      raise ConfigError(f'{where}.fields.{field}: the ESP attribute name must be a non-empty '
                        'string')
    mapped.append((field, attribute))
  audiences = raw.get('audiences', ())
  if audiences != ALL_AUDIENCES:
    if not isinstance(audiences, (list, tuple)) or not all(
        isinstance(a, str) and a for a in audiences):
      raise ConfigError(f'{where}.audiences must be a list of audience keys or "*"')
    audiences = tuple(audiences)
  template = str(raw.get('audience_attribute', 'audience_{key}'))
  if '{key}' not in template or template.replace('{key}', '').count('{'):
    raise ConfigError(f'{where}.audience_attribute must contain {{key}} and no other braces, '
                      f'got {template!r}')
  if not mapped and not audiences:
    raise ConfigError(f'{where}: nothing to sync: give `fields`, `audiences` or both')
  attributes = [a for _, a in mapped]
  if len(set(attributes)) != len(attributes):
    raise ConfigError(f'{where}.fields: two fields map to the same ESP attribute')
  options = raw.get('options') or {}
  if not isinstance(options, Mapping):
    raise ConfigError(f'{where}.options must be a mapping')
  return Destination(
      name=name, type=kind, base_url=base_url, api_key_env=key_env, api_key=api_key,
      fields=tuple(mapped), audiences=audiences, audience_attribute=template,
      rate_limit=_rate_limit(_require(raw, 'rate_limit', where), where),
      timeout_seconds=float(_number(raw.get('timeout_seconds', 10.0), f'{where}.timeout_seconds')),
      max_attempts=int(_number(raw.get('max_attempts', 8), f'{where}.max_attempts', minimum=1,
                               integer=True, strict=False)),
      backoff_seconds=float(_number(raw.get('backoff_seconds', 0.5), f'{where}.backoff_seconds')),
      backoff_max_seconds=float(_number(raw.get('backoff_max_seconds', 60.0),
                                        f'{where}.backoff_max_seconds')),
      options=tuple(sorted(options.items())))


def parse(raw: Any, env: Mapping[str, str] | None = None) -> SyncConfig:
  """A parsed YAML document -> SyncConfig; ConfigError naming the first bad key."""
  env = os.environ if env is None else env
  if not isinstance(raw, Mapping):
    raise ConfigError('the sync config must be a YAML mapping')
  _known(raw, {'subscription', 'dead_letter_topic', 'destinations', 'project', 'database',
               'state_collection', 'documents_collection', 'batch_seconds', 'max_batch',
               'ack_deadline_seconds', 'listen'}, 'sync config')
  subscription = str(_require(raw, 'subscription', 'sync config'))
  match = _SUBSCRIPTION.fullmatch(subscription)
  if not match:
    raise ConfigError(f'subscription must be projects/P/subscriptions/S, got {subscription!r}')
  topic = str(_require(raw, 'dead_letter_topic', 'sync config'))
  if not _TOPIC.fullmatch(topic):
    raise ConfigError(f'dead_letter_topic must be projects/P/topics/T, got {topic!r}')
  raw_destinations = _require(raw, 'destinations', 'sync config')
  if not isinstance(raw_destinations, list):
    raise ConfigError('destinations must be a list')
  destinations = tuple(_destination(d, i, env) for i, d in enumerate(raw_destinations))
  names = [d.name for d in destinations]
  if len(set(names)) != len(names):
    raise ConfigError('destinations: two destinations have the same name')
  listen = str(raw.get('listen', '127.0.0.1:9464'))
  where = _LISTEN.fullmatch(listen)
  if not where or not 0 <= int(where['port']) <= 65535:
    raise ConfigError(f'listen must be HOST:PORT, got {listen!r}')
  collection = str(raw.get('state_collection', 'sync_state'))
  documents = str(raw.get('documents_collection', 'customers'))
  for key, value in (('state_collection', collection), ('documents_collection', documents)):
    if not value or '/' in value:
      raise ConfigError(f'{key} must be a top-level collection id (no `/`)')
  return SyncConfig(
      subscription=subscription, dead_letter_topic=topic, destinations=destinations,
      project=str(raw.get('project') or match.group(1)),
      database=str(raw.get('database', '(default)')), state_collection=collection,
      documents_collection=documents,
      batch_seconds=float(_number(raw.get('batch_seconds', 1.0), 'batch_seconds')),
      max_batch=int(_number(raw.get('max_batch', 1000), 'max_batch', minimum=1, integer=True,
                            strict=False)),
      ack_deadline_seconds=int(_number(raw.get('ack_deadline_seconds', 60),
                                       'ack_deadline_seconds', minimum=10, integer=True,
                                       strict=False)),
      listen=(where['host'], int(where['port'])))


def load(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> SyncConfig:
  """Reads and validates the config file at `path`."""
  file = pathlib.Path(path)
  try:
    raw = yaml.safe_load(file.read_text())
  except OSError as err:
    raise ConfigError(f'cannot read the sync config {file}: {err.strerror}') from err
  except yaml.YAMLError as err:
    raise ConfigError(f'the sync config {file} is not valid YAML: {err}') from err
  return parse(raw, env)
