"""The shapes every ESP adapter shares, and the HTTP rules they have in common. Pure: no I/O.

An adapter turns changed customer attributes (`Item`s) into the exact requests one vendor's bulk
endpoint takes (`Vendor.requests`), and classifies each answer (`Vendor.verdict`) so the worker
knows what succeeded, what to retry and when, what to dead-letter, and what to ask next (Klaviyo's
job polls). The vendor rules and the documentation they come from are in docs/DESTINATIONS.md.
"""
from __future__ import annotations

import dataclasses
import email.utils
import json
import re
from typing import Callable, Mapping, Protocol, Sequence

ACCEPTED, RETRY, PERMANENT, FOLLOW_UP = 'accepted', 'retry', 'permanent', 'follow_up'

# attribute_problem(name) checks the name alone (when the worker loads its mapping); with a value
# it checks the value too.
NAME_ONLY = object()

_REASON_LIMIT = 200
_EMAIL = re.compile(r'[^\s@"\'<>(),;:]+@[^\s@"\'<>(),;:]+\.[A-Za-z]{2,}')


@dataclasses.dataclass(frozen=True)
class Item:
  """One customer's changed attributes, already renamed to the ESP's attribute names."""
  customer_id: str
  attributes: dict


@dataclasses.dataclass(frozen=True)
class Request:
  """One HTTP request to send as is. `path` is appended to the destination's base URL (no trailing
  '/'); `headers` carry everything but the auth header (see `Vendor.auth_headers`); `items` are the
  items the request, or the job it polls, carries; `context` is the adapter's own carry-over
  between follow-up requests (opaque to the worker)."""
  method: str
  path: str
  body: bytes | None
  headers: tuple[tuple[str, str], ...]
  items: tuple[Item, ...]
  context: tuple = ()


@dataclasses.dataclass(frozen=True)
class Verdict:
  """What an answer means. ACCEPTED: every item succeeded except `failed` (item, reason) pairs, which
  the worker dead-letters. RETRY: send the same request again after `retry_after` seconds (None: the
  answer said nothing; the worker backs off on its own). PERMANENT: dead-letter every item of the
  request. FOLLOW_UP: send `follow_up` after `follow_up_delay` seconds; its verdict decides."""
  kind: str
  failed: tuple[tuple[Item, str], ...] = ()
  retry_after: float | None = None
  follow_up: Request | None = None
  follow_up_delay: float = 0.0
  reason: str = ''


class ItemProblem(ValueError):
  """Items `requests()` cannot send at all, each with a reason. The worker dead-letters `items` and
  calls `requests()` again with the others: raising (rather than returning them) keeps the
  interface one list of requests, and such items are rare (a bad mapping or a huge value)."""

  def __init__(self, items: Sequence[Item], reasons: Sequence[str]):
    self.items = tuple(items)
    self.reasons = tuple(reasons)
    self.item = self.items[0]
    super().__init__(f'{len(self.items)} item(s) cannot be sent: {self.reasons[0]}')


class ItemTooLarge(ItemProblem):
  """Items whose own encoding is over the vendor's per-request (or per-profile) byte limit."""


class Vendor(Protocol):
  type: str
  max_items: int
  max_bytes: int

  def auth_headers(self, api_key: str) -> dict[str, str]:
    ...

  def requests(self, items: Sequence[Item]) -> list[Request]:
    ...

  def verdict(self, request: Request, status: int, headers: Mapping[str, str], body: bytes,
              now: float) -> Verdict:
    ...

  def attribute_problem(self, name: str, value: object = NAME_ONLY) -> str | None:
    ...


def encode(value: object) -> bytes:
  """The one JSON encoding of every body: sorted keys, no spaces, UTF-8, no NaN. The same value
  always gives the same bytes, so a retried request is byte-identical."""
  return json.dumps(value, sort_keys=True, separators=(',', ':'), ensure_ascii=False,
                    allow_nan=False).encode('utf-8')


def decode(body: bytes) -> object | None:
  """The parsed JSON of an answer, or None when it is not JSON."""
  try:
    return json.loads(body)
  except (ValueError, UnicodeDecodeError):
    return None


def sort_unique(items: Sequence[Item]) -> list[Item]:
  """Items in customer_id order; a customer twice in one call is the worker's bug (which update
  wins would depend on the ESP's processing order), so it raises."""
  ordered = sorted(items, key=lambda item: item.customer_id)
  for before, after in zip(ordered, ordered[1:]):
    if before.customer_id == after.customer_id:
      raise ValueError('the same customer_id twice in one requests() call; coalesce first')
  return ordered


def chunk(items: Sequence[Item], fragment: Callable[[Item], bytes], envelope: Callable[[list[bytes]], bytes],
          overhead: int, max_items: int, max_bytes: int,
          max_item_bytes: int | None = None) -> list[tuple[tuple[Item, ...], bytes]]:
  """Greedy, order-keeping split of `items` into bodies of at most `max_items` fragments and
  `max_bytes` bytes. `overhead` is len(envelope([])); fragments are joined by one comma. An item
  whose fragment alone cannot fit (or is over `max_item_bytes`) raises ItemTooLarge with every such
  item, before any body is built. Linear in the number of items."""
  encoded = []
  problems, reasons = [], []
  for item in items:
    try:
      data = fragment(item)
    except (TypeError, ValueError) as error:  # not JSON (a set, NaN, ...): the worker's mapping
      problems.append(item)
      reasons.append(f'attributes are not JSON: {type(error).__name__}')
      continue
    if overhead + len(data) > max_bytes or (max_item_bytes is not None and len(data) > max_item_bytes):
      problems.append(item)
      reasons.append(f'encoded item is {len(data)} bytes, over the limit')
      continue
    encoded.append((item, data))
  if problems:
    too_large = all(reason.startswith('encoded') for reason in reasons)
    raise (ItemTooLarge if too_large else ItemProblem)(problems, reasons)
  chunks, batch, size = [], [], overhead
  for item, data in encoded:
    extra = len(data) + (1 if batch else 0)
    if batch and (len(batch) == max_items or size + extra > max_bytes):
      chunks.append(batch)
      batch, size, extra = [], overhead, len(data)
    batch.append((item, data))
    size += extra
  if batch:
    chunks.append(batch)
  return [(tuple(item for item, _ in batch), envelope([data for _, data in batch])) for batch in chunks]


def retry_after(value: str | None, now: float) -> float | None:
  """Seconds from a Retry-After value: delta-seconds or an HTTP-date (RFC 9110 10.2.3), never
  negative; None when absent or unreadable."""
  if value is None or not value.strip():
    return None
  value = value.strip()
  try:
    return max(float(value), 0.0)
  except ValueError:
    pass
  try:
    when = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError, IndexError):
    return None
  if when is None:
    return None
  return max(when.timestamp() - now, 0.0)


def number(value: str | None) -> float | None:
  """A header's numeric value, or None."""
  try:
    return float(value) if value is not None else None
  except ValueError:
    return None


def classify(status: int) -> str | None:
  """RETRY for 408, 429 and 5xx (transient by HTTP's own meaning), PERMANENT for every other
  non-2xx answer, None for 2xx (the vendor's body decides)."""
  if 200 <= status < 300:
    return None
  if status in (408, 429) or status >= 500:
    return RETRY
  return PERMANENT


def short_reason(text: object) -> str:
  """A reason fit for logs and dead letters: one line, at most 200 characters, email addresses
  masked (vendor messages may echo them)."""
  line = ' '.join(str(text).split())
  line = _EMAIL.sub('<email>', line)
  return line if len(line) <= _REASON_LIMIT else line[:_REASON_LIMIT - 3] + '...'


def status_reason(status: int, body: bytes) -> str:
  """'HTTP 400: <vendor message>' from whichever message field the vendor's error body has."""
  parsed = decode(body)
  message = ''
  if isinstance(parsed, dict):
    errors = parsed.get('errors')
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
      first = errors[0]
      message = first.get('detail') or first.get('title') or first.get('type') or ''
    message = message or parsed.get('message') or parsed.get('msg') or parsed.get('code') or ''
  return short_reason(f'HTTP {status}: {message}' if message else f'HTTP {status}')


def options_problem(type_: str, options: Mapping, known: Mapping[str, Callable[[object], str | None]]) -> None:
  """Raises ValueError naming the unknown options, or the first bad value, of `options`."""
  if not isinstance(options, Mapping):
    raise ValueError(f'{type_} options must be a mapping, not {type(options).__name__}')
  unknown = sorted(set(options) - set(known))
  if unknown:
    raise ValueError(f'unknown {type_} option(s): {", ".join(map(str, unknown))} '
                     f'(known: {", ".join(sorted(known)) or "none"})')
  for name, check in known.items():
    if name in options:
      problem = check(options[name])
      if problem:
        raise ValueError(f'{type_} option {name}: {problem}')


def is_bool(value: object) -> str | None:
  return None if isinstance(value, bool) else f'must be true or false, not {value!r}'


def int_between(low: int, high: int) -> Callable[[object], str | None]:
  def check(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
      return f'must be an integer from {low} to {high}, not {value!r}'
    return None
  return check


def check_api_key(api_key: str) -> None:
  """An API key must be a non-empty header value (no line breaks that would split the header)."""
  if not isinstance(api_key, str) or not api_key.strip() or any(c in api_key for c in '\r\n'):
    raise ValueError('the API key must be a non-empty single-line string')


def lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
  return {key.lower(): value for key, value in headers.items()}
