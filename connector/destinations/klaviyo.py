"""Klaviyo `POST /api/profile-bulk-import-jobs`: a JSON:API import job, then polls. Pure.

The job is asynchronous: 202 with a job id, `GET /api/profile-bulk-import-jobs/{id}` until
`complete`, then (only when `failed_count` > 0) `GET .../{id}/import-errors`, page by page through
`links.next`. The failures travel in `Request.context` from page to page, and the final verdict
is ACCEPTED with the failed profiles matched to items by external_id.

https://developers.klaviyo.com/en/reference/bulk_import_profiles (10,000 profiles, 5 MB per job,
100 KB per profile; spec: https://github.com/klaviyo/openapi, openapi/stable/apis/
bulk_import_profiles.json, get_bulk_import_profiles_job.json,
get_errors_for_bulk_import_profiles_job.json),
https://developers.klaviyo.com/en/docs/rate_limits_and_error_handling (Retry-After on 429,
RateLimit-* otherwise), https://developers.klaviyo.com/en/docs/use_klaviyos_bulk_profile_import_api
(null does not clear a field in a bulk import).
"""
from __future__ import annotations

import dataclasses
import datetime
import re
import urllib.parse
from typing import ClassVar, Mapping, Sequence

from connector.destinations import base

Item = base.Item

PATH = '/api/profile-bulk-import-jobs'
MAX_ITEMS = 10_000
MAX_BYTES = 5_000_000  # "5MB": read as decimal megabytes, the smaller reading
MAX_PROFILE_BYTES = 100_000  # "100KB" per profile, likewise
DEFAULT_REVISION = '2026-07-15'  # the newest revision in klaviyo/openapi's stable spec (July 2026)
ERRORS_PAGE_SIZE = 100  # page[size] maximum of the import-errors endpoint
MEDIA_TYPE = 'application/vnd.api+json'
# Profile attributes of the upsert object (ProfileUpsertQueryResourceObject); an item attribute of
# one of these names sets it, every other name is a custom property.
STANDARD = frozenset({'email', 'phone_number', 'first_name', 'last_name', 'organization', 'locale',
                      'title', 'image', 'location'})
LOCATION_KEYS = frozenset({'address1', 'address2', 'city', 'country', 'latitude', 'longitude',
                           'region', 'zip', 'timezone', 'ip'})
RESERVED = frozenset({'external_id', '_kx', 'anonymous_id', 'id', 'properties'})
_REVISION = re.compile(r'^(\d{4}-\d{2}-\d{2})(\.[A-Za-z0-9_-]+)?$')
_POINTER = re.compile(r'^/data/attributes/profiles/data/(\d+)(/|$)')
_PREFIX = b'{"data":{"attributes":{"profiles":{"data":['
_SUFFIX = b']}},"type":"profile-bulk-import-job"}}'
_JOB = 'job'


def attribute_problem(name: str, value: object = base.NAME_ONLY) -> str | None:
  """Why Klaviyo would refuse or ignore this attribute, or None. Names: non-empty, not an identifier
  or the `properties` container, no leading '$' (Klaviyo's legacy APIs reserved $-names; the current
  docs are silent, so we stay clear). Values: not null (a bulk import cannot clear a field: null is
  ignored, use_klaviyos_bulk_profile_import_api), `location` an object of ProfileLocation keys."""
  if not isinstance(name, str) or not name:
    return 'attribute name must be a non-empty string'
  if name in RESERVED:
    return f'{name!r} is a Klaviyo identifier or container, not an attribute'
  if name.startswith('$'):
    return f'attribute name {name[:40]!r} starts with "$"'
  if value is base.NAME_ONLY:
    return None
  if value is None:
    return f'{name}: a bulk import cannot clear a field (null is ignored)'
  if name == 'location':
    if not isinstance(value, dict) or set(value) - LOCATION_KEYS:
      return f'location must be an object of {", ".join(sorted(LOCATION_KEYS))}'
  elif name in STANDARD and not isinstance(value, str):
    return f'{name} must be a string'
  if isinstance(value, float) and value != value:
    return f'{name}: NaN is not JSON'
  return None


def revision_problem(value: object) -> str | None:
  """A revision is YYYY-MM-DD[.suffix] with a real date (the revision header's documented format)."""
  match = _REVISION.match(value) if isinstance(value, str) else None
  if not match:
    return f'must look like YYYY-MM-DD or YYYY-MM-DD.suffix, not {value!r}'
  try:
    datetime.date.fromisoformat(match.group(1))
  except ValueError:
    return f'{value!r} is not a date'
  return None


def _poll_seconds(value: object) -> str | None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 300:
    return f'must be a number of seconds in (0, 300], not {value!r}'
  return None


@dataclasses.dataclass(frozen=True)
class Klaviyo:
  """`revision` is sent on every request; `poll_seconds` is the delay before each job poll;
  `batch_size` lowers the 10,000 profiles per job."""
  revision: str = DEFAULT_REVISION
  poll_seconds: float = 1.0
  batch_size: int = MAX_ITEMS
  type: ClassVar[str] = 'klaviyo'
  max_bytes: ClassVar[int] = MAX_BYTES

  @property
  def max_items(self) -> int:
    return self.batch_size

  def auth_headers(self, api_key: str) -> dict[str, str]:
    base.check_api_key(api_key)
    return {'Authorization': f'Klaviyo-API-Key {api_key}'}

  def attribute_problem(self, name: str, value: object = base.NAME_ONLY) -> str | None:
    return attribute_problem(name, value)

  def requests(self, items: Sequence[Item]) -> list[base.Request]:
    chunks = base.chunk(base.sort_unique(items), _fragment, _envelope, len(_PREFIX) + len(_SUFFIX),
                        self.max_items, self.max_bytes, MAX_PROFILE_BYTES)
    headers = (('Accept', MEDIA_TYPE), ('Content-Type', MEDIA_TYPE), ('revision', self.revision))
    return [base.Request('POST', PATH, body, headers, batch) for batch, body in chunks]

  def verdict(self, request: base.Request, status: int, headers: Mapping[str, str], body: bytes,
              now: float) -> base.Verdict:
    kind = base.classify(status)
    if kind == base.RETRY:
      return base.Verdict(base.RETRY, retry_after=_wait(base.lower_keys(headers), status, now),
                          reason=base.status_reason(status, body))
    if kind == base.PERMANENT:
      return base.Verdict(base.PERMANENT, reason=base.status_reason(status, body))
    parsed = base.decode(body)
    if request.method == 'POST':
      return self._submitted(request, status, parsed)
    if urllib.parse.urlsplit(request.path).path.endswith('/import-errors'):
      return self._errors_page(request, parsed)
    return self._polled(request, parsed)

  def _get(self, request: base.Request, path: str, context: tuple) -> base.Request:
    return base.Request('GET', path, None, (('Accept', MEDIA_TYPE), ('revision', self.revision)),
                        request.items, context)

  def _submitted(self, request: base.Request, status: int, parsed: object) -> base.Verdict:
    """202 with the job: poll it. Without a readable job id the job cannot be followed; resending
    is safe (an import is an upsert of the same values), so RETRY."""
    job_id = _dig(parsed, 'data', 'id')
    if not isinstance(job_id, str) or not job_id:
      return base.Verdict(base.RETRY, reason=f'HTTP {status} without a job id')
    poll = self._get(request, f'{PATH}/{urllib.parse.quote(job_id, safe="")}', (_JOB, job_id))
    return base.Verdict(base.FOLLOW_UP, follow_up=poll, follow_up_delay=self.poll_seconds,
                        reason=f'job {job_id} submitted')

  def _polled(self, request: base.Request, parsed: object) -> base.Verdict:
    """`queued`/`processing`: poll again; `complete`: done, or read the import errors when
    `failed_count` > 0; `cancelled` (or `failed`, in older revisions): every item is dead-lettered.
    An unreadable or unknown answer is retried (the same poll)."""
    job_id = request.context[1] if len(request.context) > 1 else ''
    attributes = _dig(parsed, 'data', 'attributes')
    state = attributes.get('status') if isinstance(attributes, dict) else None
    if state in ('queued', 'processing'):
      return base.Verdict(base.FOLLOW_UP, follow_up=request, follow_up_delay=self.poll_seconds,
                          reason=f'job {job_id} {state}')
    if state in ('cancelled', 'failed'):
      return base.Verdict(base.PERMANENT, reason=f'job {job_id} {state}')
    if state != 'complete':
      return base.Verdict(base.RETRY, reason=base.short_reason(f'job {job_id}: unreadable status {state!r}'))
    failed_count = attributes.get('failed_count') or 0
    if not isinstance(failed_count, int) or failed_count <= 0:
      return base.Verdict(base.ACCEPTED, reason=f'job {job_id} complete')
    path = f'{PATH}/{urllib.parse.quote(job_id, safe="")}/import-errors?page%5Bsize%5D={ERRORS_PAGE_SIZE}'
    return base.Verdict(base.FOLLOW_UP, follow_up=self._get(request, path, (_JOB, job_id, failed_count, ())),
                        reason=f'job {job_id} complete with {failed_count} failed')

  def _errors_page(self, request: base.Request, parsed: object) -> base.Verdict:
    """One page of import errors: accumulate them, follow `links.next` (an absolute URL; its path
    and query are used, so the base URL must be an origin), then match them to items."""
    _, job_id, failed_count, errors = request.context
    data = parsed.get('data') if isinstance(parsed, dict) else None
    if not isinstance(data, list):
      return base.Verdict(base.RETRY, reason=f'job {job_id}: unreadable import-errors page')
    errors = errors + tuple(_error(entry) for entry in data)
    following = _dig(parsed, 'links', 'next')
    parts = urllib.parse.urlsplit(following) if isinstance(following, str) else None
    path = parts.path + (f'?{parts.query}' if parts.query else '') if parts and parts.path else None
    if path and path != request.path:  # a `next` naming this very page would loop: it ends the list
      return base.Verdict(base.FOLLOW_UP, follow_up=self._get(request, path, (_JOB, job_id, failed_count, errors)),
                          reason=f'job {job_id}: {len(errors)} import errors so far')
    failed = _match(request.items, errors, failed_count)
    return base.Verdict(base.ACCEPTED, failed=failed,
                        reason=f'job {job_id} complete, {len(failed)} of {len(request.items)} refused')


def _fragment(item: Item) -> bytes:
  attributes = {name: value for name, value in item.attributes.items() if name in STANDARD}
  properties = {name: value for name, value in item.attributes.items() if name not in STANDARD}
  attributes['external_id'] = item.customer_id
  if properties:
    attributes['properties'] = properties
  return base.encode({'type': 'profile', 'attributes': attributes})


def _envelope(fragments: list[bytes]) -> bytes:
  return _PREFIX + b','.join(fragments) + _SUFFIX


def _wait(headers: Mapping[str, str], status: int, now: float) -> float | None:
  """Retry-After (integer seconds on a 429, rate_limits_and_error_handling); otherwise, on 429 or
  an exhausted window, RateLimit-Reset (seconds until the steady window resets)."""
  after = base.retry_after(headers.get('retry-after'), now)
  if after is not None:
    return after
  reset = base.number(headers.get('ratelimit-reset'))
  remaining = base.number(headers.get('ratelimit-remaining'))
  if reset is not None and (status == 429 or remaining == 0):
    return max(reset, 0.0)
  return None


def _dig(value: object, *keys: str) -> object:
  for key in keys:
    if not isinstance(value, dict):
      return None
    value = value.get(key)
  return value


def _error(entry: object) -> tuple[str | None, int | None, str]:
  """(external_id, profile index, reason) of one import error; either may be unknown."""
  attributes = _dig(entry, 'attributes')
  attributes = attributes if isinstance(attributes, dict) else {}
  payload = attributes.get('original_payload')
  external_id = None
  if isinstance(payload, dict):
    external_id = payload.get('external_id')
    if external_id is None:
      external_id = _dig(payload, 'attributes', 'external_id')
  pointer = _dig(attributes, 'source', 'pointer')
  match = _POINTER.match(pointer) if isinstance(pointer, str) else None
  reason = base.short_reason(attributes.get('detail') or attributes.get('title')
                             or attributes.get('code') or 'import error')
  return (external_id if isinstance(external_id, str) else None,
          int(match.group(1)) if match else None, reason)


def _match(items: tuple[Item, ...], errors: tuple, failed_count: int) -> tuple[tuple[Item, str], ...]:
  """Failed items in item order: by external_id, else by the error's profile index. Errors tied to
  no item, or fewer errors than `failed_count`, mean failures we cannot place: then every item not
  already failed is failed too (dead letters can be replayed; an unseen failure is a loss)."""
  index_of = {item.customer_id: i for i, item in enumerate(items)}
  failed: dict[int, str] = {}
  unplaced = max(failed_count - len(errors), 0)
  for external_id, index, reason in errors:
    position = index_of.get(external_id) if external_id is not None else None
    if position is None and index is not None and 0 <= index < len(items):
      position = index
    if position is None:
      unplaced += 1
    else:
      failed.setdefault(position, reason)
  if unplaced:
    for position in range(len(items)):
      failed.setdefault(position, f'{unplaced} import error(s) not tied to a profile')
  return tuple((items[i], failed[i]) for i in sorted(failed))


def make(options: Mapping) -> Klaviyo:
  base.options_problem('klaviyo', options, {'revision': revision_problem, 'poll_seconds': _poll_seconds,
                                            'batch_size': base.int_between(1, MAX_ITEMS)})
  return Klaviyo(**options)
