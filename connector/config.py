"""Connector settings from the environment (12-factor). API keys are never logged or repr'd."""
from __future__ import annotations

import dataclasses
import os
import pathlib


class ConfigError(Exception):
  """A setting is missing or malformed; the message says which and how to fix it."""


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

  @classmethod
  def from_env(cls, env=None) -> 'Settings':
    env = os.environ if env is None else env
    project = env.get('CONNECTOR_PROJECT') or env.get('GOOGLE_CLOUD_PROJECT')
    if not project:
      raise ConfigError('set CONNECTOR_PROJECT (or GOOGLE_CLOUD_PROJECT) to the Firestore project')
    keys = [k.strip() for k in env.get('CONNECTOR_API_KEYS', '').split(',') if k.strip()]
    key_file = env.get('CONNECTOR_API_KEYS_FILE')
    if key_file:
      path = pathlib.Path(key_file)
      if not path.is_file():
        raise ConfigError(f'CONNECTOR_API_KEYS_FILE {key_file} is not a readable file')
      keys += [line.strip() for line in path.read_text().splitlines()
               if line.strip() and not line.startswith('#')]
    if not keys:
      raise ConfigError('set CONNECTOR_API_KEYS (comma-separated) or CONNECTOR_API_KEYS_FILE '
                        '(one key per line): every endpoint but health needs a key')
    if any(len(k) < 16 for k in keys):
      raise ConfigError('API keys must be at least 16 characters long')
    try:
      ttl = float(env.get('CONNECTOR_CACHE_TTL_SECONDS', '30'))
      port = int(env.get('CONNECTOR_PORT', '8080'))
    except ValueError as err:
      raise ConfigError(f'CONNECTOR_CACHE_TTL_SECONDS / CONNECTOR_PORT: {err}') from err
    if ttl < 0:
      raise ConfigError('CONNECTOR_CACHE_TTL_SECONDS must be >= 0')
    return cls(project=project, database=env.get('CONNECTOR_DATABASE', '(default)'),
               collection=env.get('CONNECTOR_COLLECTION', 'customers'), api_keys=tuple(keys),
               cache_ttl_seconds=ttl, host=env.get('CONNECTOR_HOST', '127.0.0.1'), port=port)
