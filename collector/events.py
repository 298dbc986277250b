"""What the collector does to each event before publishing it. Pure functions, no I/O.

The collector refuses only what it cannot forward (a body that is not a JSON object, an event over
the size limit, a batch over its limits); it does not check the Segment spec beyond that: the
pipeline validates each event and dead-letters what is bad, with the reason, where it can be
queried. Each refusal carries a `reason` (the metrics label) and a message naming the limit.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import ipaddress
import uuid
from typing import Any, Iterable, Mapping

import orjson

# Segment's HTTP Tracking API limits ("32KB per call", "500KB per batch request", 2,500 events
# per batch). An event's size is that of the JSON the collector publishes for it, so whatever it
# accepts also fits the pipeline's own per-message limit (the same 32 KB); a body is measured
# after gzip decompression.
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_EVENTS = 2500
# Call types per Segment's spec; a single-event endpoint sets `type` from its path.
CALL_TYPES = ('track', 'identify', 'page', 'screen', 'group', 'alias')
# Dotted query names of RudderStack's pixel (`context.page.url=...`) nest at most this deep.
_MAX_QUERY_DEPTH = 8


@dataclasses.dataclass
class Refused(Exception):
  """A request the collector cannot forward: answered `status` with {"error": reason, ...}."""
  reason: str
  message: str
  status: int = 400


@dataclasses.dataclass(frozen=True)
class Stamp:
  """What the collector adds to each event of one request."""
  received_at: str          # server time, UTC ISO-8601 with milliseconds
  ip: str | None            # the client address for context.ip (already truncated if asked)


@dataclasses.dataclass(frozen=True)
class Envelope:
  """Batch-level fields Segment's batch merges into each event (the event's own keys win)."""
  context: Mapping[str, Any] | None = None
  integrations: Mapping[str, Any] | None = None
  sent_at: Any = None


NO_ENVELOPE = Envelope()


def received_at(now: dt.datetime) -> str:
  return now.astimezone(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.') + \
      f'{now.microsecond // 1000:03d}Z'


def parse_object(body: bytes, what: str = 'body') -> dict:
  """A request body (or pixel data) -> the JSON object it holds, or Refused."""
  try:
    value = orjson.loads(body)
  except orjson.JSONDecodeError as err:
    raise Refused('invalid_json', f'{what} is not valid JSON: {err}') from None
  if not isinstance(value, dict):
    raise Refused('not_an_object', f'{what} must be a JSON object, got {_kind(value)}')
  return value


def batch_of(body: dict) -> tuple[list[dict], Envelope]:
  """A batch body `{"batch": [...], "context", "integrations", "sentAt"}` -> its events and the
  fields merged into each; Refused when `batch` is not a list of at most 2,500 objects."""
  events = body.get('batch')
  if not isinstance(events, list):
    raise Refused('invalid_batch', 'body must be {"batch": [event, ...]}, got batch as '
                  f'{_kind(events)}')
  if len(events) > MAX_BATCH_EVENTS:
    raise Refused('batch_too_many_events',
                  f'batch holds {len(events)} events, over the limit of {MAX_BATCH_EVENTS}')
  for i, event in enumerate(events):
    if not isinstance(event, dict):
      raise Refused('not_an_object', f'batch[{i}] must be a JSON object, got {_kind(event)}')
  context, integrations = body.get('context'), body.get('integrations')
  return events, Envelope(context if isinstance(context, dict) else None,
                          integrations if isinstance(integrations, dict) else None,
                          body.get('sentAt', body.get('sent_at')))


def encode(event: dict, stamp: Stamp, envelope: Envelope = NO_ENVELOPE,
           call_type: str | None = None, index: int | None = None) -> tuple[bytes, str]:
  """One event -> (the JSON published for it, its messageId).

  Sets `receivedAt`, `type` (single-event endpoints), `messageId` when missing, `sentAt` from the
  batch when the event has none, `context.ip` when the client did not set one; merges the batch's
  `context` and `integrations` under the event's own; drops `writeKey`. Keeps everything else
  as sent (the client's timestamps feed the pipeline's clock-skew correction). Mutates `event`.
  """
  where = 'event' if index is None else f'batch[{index}]'
  event.pop('writeKey', None)
  event.pop('write_key', None)
  if call_type is not None:
    event['type'] = call_type
  message_id = event.get('messageId', event.get('message_id'))
  if message_id is None or message_id == '':
    message_id = str(uuid.uuid4())
    event.pop('message_id', None)
    event['messageId'] = message_id
  event['receivedAt'] = stamp.received_at
  event.pop('received_at', None)
  if envelope.sent_at is not None and 'sentAt' not in event and 'sent_at' not in event:
    event['sentAt'] = envelope.sent_at
  for name, shared in (('context', envelope.context), ('integrations', envelope.integrations)):
    own = event.get(name)
    if shared and own is None:
      event[name] = dict(shared)
    elif shared and isinstance(own, dict):
      event[name] = {**shared, **own}
  context = event.get('context')
  if context is None and stamp.ip:
    event['context'] = context = {}
  if isinstance(context, dict):
    if stamp.ip and not context.get('ip'):
      context['ip'] = stamp.ip
  try:
    data = orjson.dumps(event)
  except orjson.JSONEncodeError as err:  # nesting deeper than orjson writes (254 levels)
    raise Refused('unencodable', f'{where} cannot be forwarded: {err}') from None
  if len(data) > MAX_EVENT_BYTES:
    raise Refused('event_too_large', f'{where} is {len(data)} bytes as forwarded, over the limit '
                  f'of {MAX_EVENT_BYTES} (32 KB per event)')
  return data, message_id if isinstance(message_id, str) else str(message_id)


def pixel_event(query: Mapping[str, list[str]], dotted: bool) -> tuple[dict, str | None]:
  """A pixel's query -> (event, write key).

  Segment's pixel (`dotted=False`): `data` is the event JSON, base64 (standard or URL-safe,
  padding optional) or plain, with the key in it as `writeKey`. RudderStack's
  (`dotted=True`): one query parameter per field, nested by dots (`context.page.url`,
  `properties.plan`), the key as `writeKey`.
  """
  if not dotted:
    data = _first(query, 'data')
    if data is None:
      raise Refused('invalid_pixel', 'pixel needs ?data=<base64 JSON>')
    event = parse_object(_base64_or_plain(data), 'pixel data')
    return event, _text(event.get('writeKey'))
  event: dict = {}
  for name, values in query.items():
    if name == 'writeKey':
      continue
    path = name.split('.')
    if len(path) > _MAX_QUERY_DEPTH or not all(path):
      raise Refused('invalid_pixel', f'query parameter {name[:64]!r} is not a field path')
    node = event
    for part in path[:-1]:
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise Refused('invalid_pixel', f'query parameter {name[:64]!r} conflicts with another')
    if isinstance(node.get(path[-1]), dict):
      raise Refused('invalid_pixel', f'query parameter {name[:64]!r} conflicts with another')
    node[path[-1]] = values[-1]
  return event, _first(query, 'writeKey')


def basic_auth_user(header: str | None) -> str | None:
  """The username of an `Authorization: Basic` header (Segment's and RudderStack's write key),
  or None when there is none or it is malformed."""
  if not header or header[:6].lower() != 'basic ':
    return None
  try:
    decoded = base64.b64decode(header[6:].strip(), validate=True).decode('utf-8')
  except ValueError:  # binascii.Error, UnicodeDecodeError, and text that is not ASCII at all
    return None
  user = decoded.partition(':')[0]
  return user or None


def client_ip(peer: str | None, forwarded_for: str | None,
              trusted: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
              truncate: bool) -> str | None:
  """The client's address: the TCP peer, or, when the peer is a trusted proxy, the right-most
  X-Forwarded-For entry that is not itself a trusted proxy. Truncated to its /24 (IPv4) or /48
  (IPv6) network when asked. None when nothing usable is known."""
  trusted = tuple(trusted)
  address = _address(peer)
  if address is not None and forwarded_for and _within(address, trusted):
    for entry in reversed(forwarded_for.split(',')):
      candidate = _address(entry.strip())
      if candidate is None:
        break  # a malformed hop: believe nothing further left
      address = candidate
      if not _within(candidate, trusted):
        break
  if address is None:
    return None
  if address.version == 6 and address.ipv4_mapped is not None:
    address = address.ipv4_mapped  # ::ffff:203.0.113.9 is an IPv4 client (a dual-stack socket)
  if truncate:
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f'{address}/{prefix}', strict=False).network_address)
  return str(address)


def _address(text: str | None):
  if not text:
    return None
  try:
    return ipaddress.ip_address(text)
  except ValueError:
    return None


def _within(address, networks) -> bool:
  return any(address.version == n.version and address in n for n in networks)


def _base64_or_plain(data: str) -> bytes:
  stripped = data.strip()
  if stripped.startswith('{'):
    return stripped.encode()
  # A '+' in an unencoded query arrives as a space; '-' and '_' are the URL-safe alphabet.
  text = stripped.replace(' ', '+').replace('-', '+').replace('_', '/')
  try:
    return base64.b64decode(text + '=' * (-len(text) % 4), validate=True)
  except ValueError:  # binascii.Error, or text that is not ASCII at all
    raise Refused('invalid_pixel', 'pixel data is neither base64 nor JSON') from None


def _first(query: Mapping[str, list[str]], name: str) -> str | None:
  values = query.get(name)
  return values[0] if values else None


def _text(value) -> str | None:
  return value if isinstance(value, str) and value else None


def _kind(value) -> str:
  return {dict: 'an object', list: 'an array', str: 'a string', bool: 'a boolean',
          type(None): 'null'}.get(type(value), 'a number')
