"""Parse, validate and normalise one Segment event. Pure functions, no Beam.

`parse_event(payload, source, ingested_at_micros)` returns either an event record (a dict shaped
like `schemas/events.avsc`, with JSON columns as Python objects) or a `Rejection` saying why not.
It never raises on bad input: every payload ends up valid or rejected.

The six Segment calls become records of one shape: `event` holds the name of a track, page or
screen call; an alias's `previousId` becomes its `anonymous_id`, so that it links the two ids as
any event carrying both does (transforms.rules.identity); a group's `groupId` goes to `group_id`.
"""
from __future__ import annotations

import datetime as dt
import decimal
import hashlib
from typing import Any

import fastjsonschema
import orjson

import schemas
from transforms.rules.dead_letters import Rejection, redact_emails

DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024
DEFAULT_CURRENCY = 'USD'
_MONEY_FIELDS = ('price', 'total', 'revenue')
# BigQuery NUMERIC holds 9 decimal places.
_MONEY_SCALE = 9
_MONEY_QUANTUM = decimal.Decimal(1).scaleb(-_MONEY_SCALE)

# Failure types (the `failure_type` column of the dead-letter table).
INVALID_JSON = 'invalid_json'
SCHEMA_VIOLATION = 'schema_violation'
SIZE_VIOLATION = 'size_violation'
UNSUPPORTED_TYPE = 'unsupported_type'

# snake_case keys RudderStack and others send, mapped onto the Segment (camelCase) names.
_ALIASES = {
    'message_id': 'messageId',
    'user_id': 'userId',
    'anonymous_id': 'anonymousId',
    'original_timestamp': 'originalTimestamp',
    'sent_at': 'sentAt',
    'received_at': 'receivedAt',
    'previous_id': 'previousId',
    'group_id': 'groupId',
}
# Calls whose `event` column holds a name, and the field it comes from.
_NAME_FIELDS = {'track': 'event', 'page': 'name', 'screen': 'name'}
_TIME_FIELDS = ('timestamp', 'originalTimestamp', 'sentAt', 'receivedAt')
# Event times outside this range are rejected: BigQuery DAY partitions hold 1960..2159, and a
# timestamp in year 1 or 9999 is a client bug, not a customer action.
_MIN_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MAX_TIME = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)
# Deepest nesting of objects and arrays accepted (the event object is level 1). orjson parses up to
# 1,024 levels but serialises at most 254 (the BigQuery row of a deeper event cannot be written),
# and pickling recurses per level; real events nest a handful of levels.
MAX_NESTING_DEPTH = 32


def parse_event(payload: bytes | str,
                source: str,
                ingested_at: int,
                max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> dict | Rejection:
  """One raw payload (a JSON line or a Pub/Sub message body) -> event record or Rejection.

  `ingested_at` is microseconds since the epoch.
  """
  size = len(payload.encode() if isinstance(payload, str) else payload)
  if size > max_bytes:
    return Rejection(SIZE_VIOLATION, f'message is {size} bytes, over the limit of {max_bytes}')
  try:
    raw = orjson.loads(payload)
  except orjson.JSONDecodeError as err:
    return Rejection(INVALID_JSON, f'not valid JSON: {err}')
  if not isinstance(raw, dict):
    return Rejection(SCHEMA_VIOLATION, f'event must be a JSON object, got {type(raw).__name__}')
  if _nested_deeper_than(raw, MAX_NESTING_DEPTH, payload):
    return Rejection(SCHEMA_VIOLATION,
                     f'event nests objects or arrays deeper than {MAX_NESTING_DEPTH} levels')
  for alias, name in _ALIASES.items():
    if alias in raw and name not in raw:
      raw[name] = raw.pop(alias)
  call_type = raw.get('type')
  if call_type not in schemas.supported_event_types():
    return Rejection(
        UNSUPPORTED_TYPE,
        f'type {call_type!r} is not one of {", ".join(schemas.supported_event_types())}')
  try:
    schemas.segment_event_validator()(raw)
  except fastjsonschema.JsonSchemaValueException as err:
    return Rejection(SCHEMA_VIOLATION, _describe(err))
  times = {}
  for name in _TIME_FIELDS:
    value = raw.get(name)
    if value is None:
      continue
    parsed = parse_time(value)
    if parsed is None:
      return Rejection(SCHEMA_VIOLATION, f'{name} is not an ISO-8601 timestamp: {value!r}')
    times[name] = parsed
  try:
    event_time = _event_time(times)
  except OverflowError:  # the skew correction of extreme times leaves datetime's range
    return Rejection(SCHEMA_VIOLATION, 'clock-skew-corrected event time is outside 1970..2099')
  if not _MIN_TIME <= event_time < _MAX_TIME:
    return Rejection(SCHEMA_VIOLATION,
                     f'event time {event_time.isoformat()} is outside 1970..2099')
  properties = raw.get('properties')
  traits = raw.get('traits')
  context = raw.get('context')
  # A group's traits describe the group: their address is not the customer's, so it is not
  # hashed into email_sha256 but replaced by a token below, like an address under any other key.
  email = _pop_email(None if call_type == 'group' else traits, properties, context)
  if (b'@' if isinstance(payload, bytes) else '@') in payload:
    # An address under any other key (`recipient`, `Email`, a URL's query) is stored nowhere
    # either: every string of the free-form fields gets the token dead letters use.
    properties, traits, context = (_redacted(properties), _redacted(traits),
                                   _redacted(context))
  commerce = _commerce(properties or {})
  if isinstance(commerce, Rejection):
    return commerce
  return {
      'message_id': raw['messageId'],
      'type': call_type,
      'event': raw.get(_NAME_FIELDS[call_type]) if call_type in _NAME_FIELDS else None,
      'user_id': raw.get('userId') or None,
      'anonymous_id': raw.get('previousId' if call_type == 'alias' else 'anonymousId') or None,
      'event_time': schemas.datetime_to_micros(event_time),
      'original_timestamp': _micros_or_none(times.get('originalTimestamp')),
      'sent_at': _micros_or_none(times.get('sentAt')),
      'received_at': _micros_or_none(times.get('receivedAt')),
      'email_sha256': hash_email(email) if email else None,
      **commerce,
      'properties': properties,
      'traits': traits,
      'context': context,
      'source': source,
      'ingested_at': ingested_at,
      'group_id': raw.get('groupId') if call_type == 'group' else None,
  }


def _commerce(properties: dict) -> dict | Rejection:
  """The E-commerce v2 fields as typed columns: ids as strings, money as Decimal, quantity as int.

  The schema has already checked the types and ranges; this only converts. `quantity` defaults to 1
  on events about a product and is null elsewhere; `currency` defaults to USD when there is money.
  """
  money = {}
  for name in _MONEY_FIELDS:
    value = properties.get(name)
    # str() of a float is its shortest repr, so 18.99 becomes Decimal('18.99'), not a binary tail.
    money[name] = None if value is None else decimal.Decimal(str(value))
    if money[name] is not None and money[name].as_tuple().exponent < -_MONEY_SCALE:
      money[name] = money[name].quantize(_MONEY_QUANTUM, rounding=decimal.ROUND_HALF_EVEN)
  product_id = _id(properties.get('product_id'))
  quantity = properties.get('quantity')
  if quantity is None:
    quantity = 1 if product_id is not None else None
  elif quantity != int(quantity):
    return Rejection(SCHEMA_VIOLATION, f'properties.quantity must be a whole number: {quantity!r}')
  currency = properties.get('currency')
  if currency is None and any(v is not None for v in money.values()):
    currency = DEFAULT_CURRENCY
  return {
      'product_id': product_id,
      'order_id': _id(properties.get('order_id')),
      **money,
      'quantity': None if quantity is None else int(quantity),
      'currency': currency.upper() if currency else None,
  }


def _id(value: Any) -> str | None:
  return None if value is None or value == '' else str(value)


_JSON_TEXT_FIELDS = ('properties', 'traits', 'context', 'integrations')


def avro_record_to_json(record: dict) -> bytes:
  """An Avro input record (`schemas/segment_event.avsc`) as the JSON payload `parse_event` takes.

  Nested objects travel as JSON text in Avro; they are decoded here so the record validates like a
  JSON line. Text that is not JSON is left as a string, so validation rejects it and names the
  field. Null fields are dropped, as absent keys are in JSON.
  """
  payload = {}
  for name, value in record.items():
    if value is None:
      continue
    if name in _JSON_TEXT_FIELDS and isinstance(value, str):
      try:
        value = orjson.loads(value)
      except orjson.JSONDecodeError:
        pass
    payload[name] = value
  return orjson.dumps(payload)


def hash_email(email: str) -> str:
  """Hex SHA-256 of the trimmed, lower-cased address (the join key ESPs and ad platforms use)."""
  return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def _describe(err: fastjsonschema.JsonSchemaValueException) -> str:
  """A dead-letter message naming the field: the schema's own `errorMessage` where it has one."""
  definition = err.definition if isinstance(err.definition, dict) else {}
  if definition.get('errorMessage'):
    return definition['errorMessage']
  # fastjsonschema names fields from the root `data` (`data.properties.price`).
  where = err.name[len('data.'):] if err.name.startswith('data.') else None
  if err.rule == 'required':
    value = err.value if isinstance(err.value, dict) else {}
    missing = ', '.join(name for name in err.rule_definition if name not in value)
    return f'missing required field(s) {missing}' + (f' in {where}' if where else '')
  message = err.message[len(err.name) + 1:] if err.message.startswith(err.name) else err.message
  return f'{where or "event"} {message}'


def parse_time(value: Any) -> dt.datetime | None:
  """ISO-8601 text -> aware UTC datetime (naive means UTC), or None when it is not one."""
  if not isinstance(value, str):
    return None
  try:
    parsed = dt.datetime.fromisoformat(value)
  except ValueError:
    return None
  if parsed.tzinfo is None:
    return parsed.replace(tzinfo=dt.timezone.utc)
  return parsed.astimezone(dt.timezone.utc)


def _event_time(times: dict[str, dt.datetime]) -> dt.datetime:
  """Segment's clock-skew correction: receivedAt - (sentAt - originalTimestamp) when all known."""
  received, sent, original = (times.get('receivedAt'), times.get('sentAt'),
                              times.get('originalTimestamp'))
  if received and sent and original:
    return received - (sent - original)
  return times.get('timestamp') or original


def _nested_deeper_than(value: dict | list, limit: int, payload: bytes | str) -> bool:
  """Whether objects and arrays nest more than `limit` levels (`value`, parsed from `payload`, is
  level 1). A loop, not recursion: the input may be 1,024 levels deep."""
  # Nesting needs at least as many brackets: most events have fewer, and counting is cheap.
  opening = ('{', '[') if isinstance(payload, str) else (b'{', b'[')
  if payload.count(opening[0]) + payload.count(opening[1]) <= limit:
    return False
  stack = [(value, 1)]
  while stack:
    container, depth = stack.pop()
    if depth > limit:
      return True
    children = container.values() if isinstance(container, dict) else container
    stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
  return False


def _micros_or_none(value: dt.datetime | None) -> int | None:
  return None if value is None else schemas.datetime_to_micros(value)


def _redacted(value: Any) -> Any:
  """`value` (parsed JSON) with every email address in its strings (keys included) replaced by
  `[email-sha256:<hex>]` (transforms.rules.dead_letters.redact_emails)."""
  if isinstance(value, str):
    return redact_emails(value.encode()).decode() if '@' in value else value
  if isinstance(value, dict):
    return {_redacted(k): _redacted(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_redacted(v) for v in value]
  return value


def _pop_email(traits: Any, properties: Any, context: Any) -> str | None:
  """Remove every email field (so the raw address is stored nowhere) and return the first."""
  found = None
  holders = [traits, properties]
  if isinstance(context, dict):
    holders.append(context.get('traits'))
  for holder in holders:
    if isinstance(holder, dict) and 'email' in holder:
      value = holder.pop('email')
      if found is None and isinstance(value, str) and value.strip():
        found = value
  return found
