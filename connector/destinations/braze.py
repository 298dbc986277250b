"""Braze `POST /users/track`: attribute objects keyed by external_id, 75 per request. Pure.

https://www.braze.com/docs/api/endpoints/user_data/post_user_track/ (body, auth, responses),
https://www.braze.com/docs/api/api_limits/ (75 attribute objects per request; X-RateLimit-* headers),
https://www.braze.com/docs/api/errors/ (fatal errors; non-fatal `errors` in a success answer).
Audience membership travels as boolean custom attributes: the worker maps it, this module sends
whatever JSON values it is given.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Mapping, Sequence

from connector.destinations import base

Item = base.Item

PATH = '/users/track'
MAX_ITEMS = 75  # attribute objects per request (api_limits, "Batching requests for Track users")
# Braze documents no request-size limit for /users/track; 4 MB is our conservative cap (75 objects of
# 255-character strings are far below it; large nested attributes are what it guards).
MAX_BYTES = 4_000_000
MAX_NAME = 255  # custom attribute keys and values: at most 255 characters (SDK "Custom attribute length")
MAX_ARRAY = 100  # array attributes beyond 100 elements are always truncated (25 by default)
# Keys of the attributes object that identify the user or steer the API, never custom attributes.
# (user attributes object: https://www.braze.com/docs/api/objects_filters/user_attributes_object/)
RESERVED = frozenset({'external_id', 'user_alias', 'braze_id', '_update_existing_only',
                      'push_token_import'})
_HEADERS = (('Accept', 'application/json'), ('Content-Type', 'application/json'))
_PREFIX, _SUFFIX = b'{"attributes":[', b']}'


def attribute_problem(name: str, value: object = base.NAME_ONLY) -> str | None:
  """Why Braze would refuse or alter this custom attribute, or None. Names: non-empty, at most 255
  characters, no leading '$' (Braze documents that rule for event property names; we hold attribute
  keys to it too, the conservative reading), not an identifier or control key. Values: strings at
  most 255 characters, arrays at most 100 elements, no NaN."""
  if not isinstance(name, str) or not name:
    return 'attribute name must be a non-empty string'
  if name.startswith('$'):
    return f'attribute name {name[:40]!r} starts with "$"'
  if len(name) > MAX_NAME:
    return f'attribute name is {len(name)} characters, over {MAX_NAME}'
  if name in RESERVED:
    return f'{name!r} is a Braze identifier or control key, not an attribute'
  if value is base.NAME_ONLY:
    return None
  if isinstance(value, str) and len(value) > MAX_NAME:
    return f'{name}: string value is {len(value)} characters, over {MAX_NAME}'
  if isinstance(value, list) and len(value) > MAX_ARRAY:
    return f'{name}: array has {len(value)} elements, over {MAX_ARRAY} (Braze truncates)'
  if isinstance(value, float) and value != value:
    return f'{name}: NaN is not JSON'
  return None


@dataclasses.dataclass(frozen=True)
class Braze:
  """`update_existing_only` sets `_update_existing_only` on every object (Braze then never creates a
  profile); `batch_size` lowers the 75 per request (Braze's MAU CY 24-25 contracts allow 50)."""
  update_existing_only: bool = False
  batch_size: int = MAX_ITEMS
  type: ClassVar[str] = 'braze'
  max_bytes: ClassVar[int] = MAX_BYTES

  @property
  def max_items(self) -> int:
    return self.batch_size

  def auth_headers(self, api_key: str) -> dict[str, str]:
    base.check_api_key(api_key)
    return {'Authorization': f'Bearer {api_key}'}

  def attribute_problem(self, name: str, value: object = base.NAME_ONLY) -> str | None:
    return attribute_problem(name, value)

  def requests(self, items: Sequence[Item]) -> list[base.Request]:
    chunks = base.chunk(base.sort_unique(items), self._fragment, _envelope,
                        len(_PREFIX) + len(_SUFFIX), self.max_items, self.max_bytes)
    return [base.Request('POST', PATH, body, _HEADERS, batch) for batch, body in chunks]

  def _fragment(self, item: Item) -> bytes:
    obj = dict(item.attributes)
    obj['external_id'] = item.customer_id
    if self.update_existing_only:
      obj['_update_existing_only'] = True
    return base.encode(obj)

  def verdict(self, request: base.Request, status: int, headers: Mapping[str, str], body: bytes,
              now: float) -> base.Verdict:
    kind = base.classify(status)
    if kind == base.RETRY:
      return base.Verdict(base.RETRY, retry_after=_wait(base.lower_keys(headers), status, now),
                          reason=base.status_reason(status, body))
    if kind == base.PERMANENT:
      return base.Verdict(base.PERMANENT, reason=base.status_reason(status, body))
    return _success(request, status, body)


def _envelope(fragments: list[bytes]) -> bytes:
  return _PREFIX + b','.join(fragments) + _SUFFIX


def _wait(headers: Mapping[str, str], status: int, now: float) -> float | None:
  """Retry-After when given (Braze does not document it; honoured anyway); else, on 429 or an
  exhausted window, the time until X-RateLimit-Reset (UTC epoch seconds, api_limits)."""
  after = base.retry_after(headers.get('retry-after'), now)
  if after is not None:
    return after
  reset = base.number(headers.get('x-ratelimit-reset'))
  remaining = base.number(headers.get('x-ratelimit-remaining'))
  if reset is not None and (status == 429 or remaining == 0):
    return max(reset - now, 0.0)
  return None


def _success(request: base.Request, status: int, body: bytes) -> base.Verdict:
  """A 2xx: `{"message": "success"}`, optionally with non-fatal `errors`, or 202 `{"message":
  "queued"}` during maintenance (errors page, "Queued responses"). Each non-fatal error names the
  array and index of the object it concerns (`{"type", "input_array", "index"}`; the doc shows only
  `<minor error message>`, the fields are Braze's answers as seen in practice). An error we cannot
  tie to one of our attribute objects fails every item (dead letters can be replayed; a silent
  loss cannot). A body that is not JSON, or another message, is retried: the request is idempotent."""
  parsed = base.decode(body)
  if not isinstance(parsed, dict):
    return base.Verdict(base.RETRY, reason=f'HTTP {status} with a body that is not a JSON object')
  message = parsed.get('message')
  if message not in ('success', 'queued'):
    return base.Verdict(base.RETRY, reason=base.short_reason(f'HTTP {status}: message {message!r}'))
  errors = parsed.get('errors') or []
  if not isinstance(errors, list):
    errors = [errors]
  failed: dict[int, str] = {}
  unattributed = []
  for error in errors:
    index = error.get('index') if isinstance(error, dict) else None
    array = error.get('input_array', 'attributes') if isinstance(error, dict) else None
    if (array == 'attributes' and isinstance(index, int) and not isinstance(index, bool)
        and 0 <= index < len(request.items)):
      failed.setdefault(index, base.short_reason(error.get('type') or 'non-fatal error'))
    else:
      unattributed.append(error)
  if unattributed:
    reason = base.short_reason(f'non-fatal error not tied to an attribute object: {unattributed[0]}')
    for index in range(len(request.items)):
      failed.setdefault(index, reason)
  return base.Verdict(base.ACCEPTED, failed=tuple((request.items[i], failed[i]) for i in sorted(failed)),
                      reason=f'{len(failed)} of {len(request.items)} refused' if failed else '')


def make(options: Mapping) -> Braze:
  base.options_problem('braze', options, {'update_existing_only': base.is_bool,
                                          'batch_size': base.int_between(1, MAX_ITEMS)})
  return Braze(**options)
