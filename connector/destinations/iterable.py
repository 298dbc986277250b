"""Iterable `POST /api/users/bulkUpdate`: users keyed by userId with their dataFields. Pure.

https://api.iterable.com/api/docs#users_bulkUpdateUser (OpenAPI: https://api.iterable.com/api-docs,
definitions BulkUpdateUsersRequest, OptionalApiUser, UserBulkUpdateListResponse, FailedUserUpdates,
IterableApiResponse): `Api-Key` header, 4 MB body, 5 requests/second per project; 200 with
`successCount`, `failCount` and `failedUpdates` lists naming the users that were not updated.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Mapping, Sequence

from connector.destinations import base

Item = base.Item

PATH = '/api/users/bulkUpdate'
# 1,000 users per request is the figure; the Iterable spec states only the 4 MB body limit
# (and the BatchTooLarge error code), so we keep the smaller of the two bounds.
MAX_ITEMS = 1_000
MAX_BYTES = 4_000_000  # "Max size of request body: 4MB", read as decimal megabytes (the smaller)
RESERVED = frozenset({'userId', 'preferUserId', 'mergeNestedObjects'})
# failedUpdates lists (FailedUserUpdates), each keyed by userId or by email.
USER_ID_LISTS = ('conflictUserIds', 'forgottenUserIds', 'invalidDataUserIds', 'invalidUserIds',
                 'notFoundUserIds')
EMAIL_LISTS = ('conflictEmails', 'forgottenEmails', 'invalidDataEmails', 'invalidEmails',
               'notFoundEmails')
_HEADERS = (('Accept', 'application/json'), ('Content-Type', 'application/json'))
_PREFIX, _SUFFIX = b'{"users":[', b']}'


def attribute_problem(name: str, value: object = base.NAME_ONLY) -> str | None:
  """Why Iterable would refuse this data field, or None. Names: non-empty, not an identifier or
  flag of the user object, no '.' (Iterable addresses nested fields with dots, so a dotted
  top-level name would be ambiguous; the docs found do not say whether it is refused). Values: no
  NaN. (Iterable also refuses a value whose type differs from the field's existing type; only the
  project knows that, and such users come back in invalidDataUserIds.)"""
  if not isinstance(name, str) or not name:
    return 'attribute name must be a non-empty string'
  if name in RESERVED:
    return f'{name!r} is an Iterable identifier or flag, not a data field'
  if '.' in name:
    return f'data field name {name[:40]!r} contains "."'
  if value is not base.NAME_ONLY and isinstance(value, float) and value != value:
    return f'{name}: NaN is not JSON'
  return None


@dataclasses.dataclass(frozen=True)
class Iterable:
  """`prefer_user_id` (preferUserId: create the user when the userId is new, in email-based
  projects); `merge_nested_objects` (mergeNestedObjects: merge top-level objects rather than
  overwrite them); `batch_size` lowers the 1,000 users per request."""
  prefer_user_id: bool = True
  merge_nested_objects: bool = False
  batch_size: int = MAX_ITEMS
  type: ClassVar[str] = 'iterable'
  max_bytes: ClassVar[int] = MAX_BYTES

  @property
  def max_items(self) -> int:
    return self.batch_size

  def auth_headers(self, api_key: str) -> dict[str, str]:
    base.check_api_key(api_key)
    return {'Api-Key': api_key}

  def attribute_problem(self, name: str, value: object = base.NAME_ONLY) -> str | None:
    return attribute_problem(name, value)

  def requests(self, items: Sequence[Item]) -> list[base.Request]:
    chunks = base.chunk(base.sort_unique(items), self._fragment, _envelope,
                        len(_PREFIX) + len(_SUFFIX), self.max_items, self.max_bytes)
    return [base.Request('POST', PATH, body, _HEADERS, batch) for batch, body in chunks]

  def _fragment(self, item: Item) -> bytes:
    return base.encode({'userId': item.customer_id, 'dataFields': dict(item.attributes),
                        'preferUserId': self.prefer_user_id,
                        'mergeNestedObjects': self.merge_nested_objects})

  def verdict(self, request: base.Request, status: int, headers: Mapping[str, str], body: bytes,
              now: float) -> base.Verdict:
    kind = base.classify(status)
    if kind == base.RETRY:
      # Iterable documents no rate-limit headers; a Retry-After, when sent, is honoured.
      after = base.retry_after(base.lower_keys(headers).get('retry-after'), now)
      return base.Verdict(base.RETRY, retry_after=after, reason=base.status_reason(status, body))
    if kind == base.PERMANENT:
      return base.Verdict(base.PERMANENT, reason=base.status_reason(status, body))
    return _success(request, status, base.decode(body))


def _envelope(fragments: list[bytes]) -> bytes:
  return _PREFIX + b','.join(fragments) + _SUFFIX


def _success(request: base.Request, status: int, parsed: object) -> base.Verdict:
  """Users named in `failedUpdates` (or the deprecated top-level invalidUserIds/invalidEmails)
  failed with that list's name as reason; users carrying a field listed in `filteredOutFields` lost
  it, so they fail too. If `failCount` says more users failed than the lists place, every item
  not already failed is failed (dead letters can be replayed; an unseen failure is a loss). A body
  without the required counts is retried: the request is idempotent."""
  if not isinstance(parsed, dict) or not isinstance(parsed.get('failCount'), int) \
      or not isinstance(parsed.get('successCount'), int):
    return base.Verdict(base.RETRY, reason=f'HTTP {status} without successCount/failCount')
  items = request.items
  by_user = {item.customer_id: i for i, item in enumerate(items)}
  by_email: dict[str, list[int]] = {}
  for i, item in enumerate(items):
    address = item.attributes.get('email')
    if isinstance(address, str):
      by_email.setdefault(address, []).append(i)
  failed: dict[int, str] = {}
  updates = parsed.get('failedUpdates') if isinstance(parsed.get('failedUpdates'), dict) else {}
  sources = [(updates, name, by_user) for name in USER_ID_LISTS]
  sources += [(updates, name, by_email) for name in EMAIL_LISTS]
  sources += [(parsed, 'invalidUserIds', by_user), (parsed, 'invalidEmails', by_email)]
  for container, name, index in sources:
    values = container.get(name)
    for value in values if isinstance(values, list) else ():
      positions = index.get(value) if isinstance(value, str) else None
      for position in ([positions] if isinstance(positions, int) else positions or ()):
        failed.setdefault(position, f'iterable {name}')
  unplaced = parsed['failCount'] - len(failed)
  if unplaced > 0:
    for i in range(len(items)):
      failed.setdefault(i, f'iterable failCount has {unplaced} user(s) no list names')
  dropped = parsed.get('filteredOutFields')
  if isinstance(dropped, list) and dropped:
    dropped_set = {name for name in dropped if isinstance(name, str)}
    for i, item in enumerate(items):
      lost = sorted(dropped_set.intersection(item.attributes))
      if lost:
        failed.setdefault(i, base.short_reason(f'iterable dropped field(s) {", ".join(lost)}'))
  return base.Verdict(base.ACCEPTED, failed=tuple((items[i], failed[i]) for i in sorted(failed)),
                      reason=f'{len(failed)} of {len(items)} refused' if failed else '')


def make(options: Mapping) -> Iterable:
  base.options_problem('iterable', options, {'prefer_user_id': base.is_bool,
                                             'merge_nested_objects': base.is_bool,
                                             'batch_size': base.int_between(1, MAX_ITEMS)})
  return Iterable(**options)
