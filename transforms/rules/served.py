"""What the serving tier holds for one customer: the bytes the connector returns for a plain
`GET /v1/customers/{id}/personalization`, their ETag, the document's `version` and
`last_event_at`. Pure functions.

The shaping is the connector's own (`connector.shaping`: served fields only, times as ISO-8601),
so the Firestore writer, which makes these entries, and the connector, which serves them, agree
byte for byte on what a document looks like; a test checks they do against both stores.

In Redis, an entry is one hash `{prefix}{customer_id}` with fields `v` (version), `body`, `etag`
and `last_event_at`, or a tombstone `{v, deleted: 1}` after a delete, so a late older write still
loses the version check (`SET_IF_NEWER` below).
"""
from __future__ import annotations

import typing
import urllib.parse

from connector import shaping

DEFAULT_PREFIX = 'personalization:customers:'
# A deleted document's tombstone is kept this long: longer than any bundle retry can take.
TOMBSTONE_SECONDS = 7 * 86_400

# KEYS[1] the entry; ARGV: version, then field/value pairs; the last ARGV is a TTL in seconds (0:
# none). Writes only when the stored version is older (or there is none) and answers 1, else 0.
# One script, so the check and the write are atomic (Redis runs a script alone).
SET_IF_NEWER = """
local stored = redis.call('HGET', KEYS[1], 'v')
if stored and tonumber(stored) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1])
local fields = {'v', ARGV[1]}
for i = 2, #ARGV - 1 do
  fields[#fields + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(fields))
local ttl = tonumber(ARGV[#ARGV])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
end
return 1
"""


class Entry(typing.NamedTuple):
  """One customer's serving-tier entry; `body` None is a tombstone (the document was deleted)."""
  version: int
  body: bytes | None
  etag: str | None
  last_event_at: str | None

  def redis_args(self) -> list:
    """ARGV of SET_IF_NEWER for this entry."""
    if self.body is None:
      return [self.version, 'deleted', 1, TOMBSTONE_SECONDS]
    return [self.version, 'body', self.body, 'etag', self.etag, 'last_event_at',
            self.last_event_at or '', 0]


def is_redis_url(url: str | None) -> bool:
  """Whether `url` names a Redis the tier can use: redis://, rediss:// (TLS) or unix://."""
  parts = urllib.parse.urlsplit(url or '')
  return parts.scheme in ('redis', 'rediss', 'unix') and bool(parts.hostname or parts.path)


def is_key_prefix(prefix: str | None) -> bool:
  """Whether `prefix` can start the tier's keys: non-empty, no whitespace."""
  return bool(prefix) and not any(c.isspace() for c in prefix)


def key(prefix: str, customer_id: str) -> str:
  return prefix + customer_id


def body(document: dict) -> bytes:
  """The connector's answer to a plain lookup of `document`: every served field, rendered."""
  return shaping.render(shaping.shape(document, shaping.served_fields()))


def entry(document: dict | None, version: int) -> Entry:
  """The entry of `document` at `version` (None: the tombstone of a deleted document)."""
  if document is None:
    return Entry(version, None, None, None)
  rendered = body(document)
  last = shaping.shape(document, ('last_event_at',))['last_event_at']
  return Entry(version, rendered, shaping.etag(rendered), last)


def parse(fields: typing.Mapping[bytes, bytes]) -> Entry | None:
  """An entry from the HGETALL/HMGET answer of its hash (bytes keys), or None when there is none
  or it is not one of ours (a foreign or half-written key is a miss, never served)."""
  try:
    version = int(fields[b'v'])
  except (KeyError, TypeError, ValueError):
    return None
  if fields.get(b'deleted') == b'1':
    return Entry(version, None, None, None)
  raw, tag = fields.get(b'body'), fields.get(b'etag')
  if raw is None or tag is None:
    return None
  last = fields.get(b'last_event_at')
  return Entry(version, raw, tag.decode(), last.decode() if last else None)
