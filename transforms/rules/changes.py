"""Profile changes: what a document write changed, as one message (schemas/profile_change.schema.json).

Pure functions, no Beam, no clients. The Firestore writer diffs the stored document against the
one it is about to write; the connector's sync worker and live stream read the result.

Fields are flattened one level, so a mapping can name `orders.lifetime_value` or `traits.ltv_90d`:
top-level scalars and lists keep their name, each member of an object field (cart, orders,
engagement, traits) becomes `parent.member`. Values are compared and sent as JSON (times as
RFC 3339 text, UTC), so a document read back from Firestore compares equal to the one rendered.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

# Not profile content: the commit's server time, the version itself, and the id.
_NOT_CONTENT = frozenset({'updated_at', 'version', 'customer_id'})
AUDIENCES = 'audiences'
VERSION = 'version'


def _plain(value: Any) -> Any:
  """A Firestore or rendered value as JSON: datetimes as RFC 3339 in UTC, containers copied."""
  if isinstance(value, dt.datetime):
    # A plain datetime from the fields: DatetimeWithNanoseconds (what Firestore returns) and the
    # rendered datetime of the same instant then give the same text.
    plain = dt.datetime(value.year, value.month, value.day, value.hour, value.minute,
                        value.second, value.microsecond, tzinfo=value.tzinfo or dt.timezone.utc)
    return plain.astimezone(dt.timezone.utc).isoformat()
  if isinstance(value, dict):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def flatten(document: dict | None) -> dict[str, Any]:
  """The document's content fields, one level flattened, as JSON values ({} for None)."""
  flat: dict[str, Any] = {}
  for name, value in (document or {}).items():
    if name in _NOT_CONTENT or name == AUDIENCES:
      continue
    if isinstance(value, dict):
      for member, inner in value.items():
        flat[f'{name}.{member}'] = _plain(inner)
    else:
      flat[name] = _plain(value)
  return flat


def _audiences(document: dict | None) -> set[str]:
  return set((document or {}).get(AUDIENCES) or ())


def next_version(stored_version: Any, now_micros: int) -> int:
  """The version of the next write of a document: strictly above the stored one, and otherwise
  the writer's clock, so a document deleted and created again still moves forward."""
  previous = stored_version if isinstance(stored_version, int) and not isinstance(
      stored_version, bool) else 0
  return max(previous + 1, now_micros)


def change_id(customer_id: str, version: int) -> str:
  """One id per customer and version: a retried publish of the same write carries the same id."""
  return hashlib.sha256(f'{customer_id}:{version}'.encode()).hexdigest()[:32]


def _rfc3339(micros: int) -> str:
  return (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
          + dt.timedelta(microseconds=micros)).isoformat()


def profile_change(customer_id: str, stored: dict | None, new: dict | None, version: int,
                   written_at_micros: int) -> dict | None:
  """The change message of writing `new` (None: deleting) over `stored` (None: absent), or None
  when nothing a reader sees changes (both None, or equal content and audiences): the writer
  skips such a write. Each document is flattened once."""
  if stored is None and new is None:
    return None
  before, after = flatten(stored), flatten(new)
  was, now = _audiences(stored), _audiences(new)
  if stored is not None and new is not None and before == after and was == now:
    return None  # the same content (version and updated_at aside): nothing to write or say
  changed = {name: value for name, value in after.items() if before.get(name, None) != value
             or name not in before}
  if new is not None:
    changed.update({name: None for name in before if name not in after})
  last_event_at = None if new is None else _plain(new.get('last_event_at'))
  return {
      'change_id': change_id(customer_id, version),
      'customer_id': customer_id,
      'version': version,
      'last_event_at': last_event_at,
      'written_at': _rfc3339(written_at_micros),
      'deleted': new is None,
      'changed': changed if new is not None else {},
      'audiences': {'entered': sorted(now - was), 'exited': sorted(was - now)},
  }
