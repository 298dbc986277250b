"""Reference data: the CRM export and the product catalog. Pure functions, no Beam.

`split_records(path, data)` cuts a whole file into records; `parse_customer` / `parse_product`
turn one record's fields into a clean record or a `Rejection`. Raw emails are hashed here and
dropped: they never travel further into the pipeline.
"""
from __future__ import annotations

import csv
import decimal
import io
from typing import Any, Callable, Iterator

import orjson

import schemas
from transforms.rules.dead_letters import Rejection
from transforms.rules.events import hash_email, parse_time

INVALID_ROW = 'invalid_row'
INVALID_JSON = 'invalid_json'
SCHEMA_VIOLATION = 'schema_violation'

_TRUE = frozenset({'true', 't', 'yes', 'y', '1'})
_FALSE = frozenset({'false', 'f', 'no', 'n', '0'})


def split_records(path: str, data: bytes) -> Iterator[tuple[bytes | str, dict | Rejection]]:
  """Yields (raw record, fields or Rejection) for every record of a CSV or NDJSON file.

  CSV (any name not ending in .json/.ndjson/.jsonl, optionally .gz) must have a header row; rows
  may contain quoted commas and newlines. `raw` is the record's exact original text (bytes when
  it is not valid UTF-8), so a dead letter carries what was in the file.
  """
  name = path[:-3] if path.endswith('.gz') else path
  if name.endswith(('.json', '.ndjson', '.jsonl')):
    yield from _split_ndjson(data)
  else:
    yield from _split_csv(data)


def parse_records(path: str, data: bytes, parse: Callable[[dict], dict | Rejection]
                  ) -> Iterator[tuple[bytes | str, dict | Rejection]]:
  """(raw record, parsed record or Rejection) for every record of a file: `split_records` with
  `parse` (parse_customer, parse_product) applied to the records that split cleanly."""
  for raw, fields in split_records(path, data):
    yield raw, parse(fields) if isinstance(fields, dict) else fields


def _split_ndjson(data: bytes) -> Iterator[tuple[bytes, dict | Rejection]]:
  for line in data.splitlines():
    if not line.strip():
      continue
    try:
      value = orjson.loads(line)
    except orjson.JSONDecodeError as err:
      yield line, Rejection(INVALID_JSON, f'not valid JSON: {err}')
      continue
    if isinstance(value, dict):
      yield line, value
    else:
      yield line, Rejection(INVALID_JSON, f'record must be a JSON object, got {type(value).__name__}')


def _split_csv(data: bytes) -> Iterator[tuple[bytes | str, dict | Rejection]]:
  # surrogateescape keeps undecodable bytes recoverable: such a row is rejected with its bytes.
  text = data.decode('utf-8-sig', errors='surrogateescape')
  lines = text.splitlines(keepends=True)
  reader = csv.DictReader(io.StringIO(text, newline=''))
  header = reader.fieldnames or []
  first_line = reader.line_num  # physical lines consumed by the header
  for row in reader:
    raw = ''.join(lines[first_line:reader.line_num]).rstrip('\r\n')
    first_line = reader.line_num
    if not raw.strip():
      continue
    try:
      raw.encode('utf-8')
    except UnicodeEncodeError:
      yield (raw.encode('utf-8', errors='surrogateescape'),
             Rejection(INVALID_ROW, 'row is not valid UTF-8'))
      continue
    extra = row.pop(None, None) or []
    missing = [key for key, value in row.items() if value is None]
    if extra or missing:
      count = len(header) - len(missing) + len(extra)
      yield raw, Rejection(INVALID_ROW, f'row has {count} fields, the header has {len(header)}')
      continue
    yield raw, row


def parse_customer(fields: dict[str, Any]) -> dict | Rejection:
  """One CRM export row -> customer record (no raw email) or Rejection."""
  customer_id = _text(fields.get('customer_id'))
  if not customer_id:
    return Rejection(SCHEMA_VIOLATION, 'customer_id is missing or empty')
  email = _text(fields.get('email'))
  opt_in = _bool(fields.get('email_opt_in'), default=False)
  if isinstance(opt_in, Rejection):
    return Rejection(SCHEMA_VIOLATION, f'email_opt_in {opt_in.message}')
  created_at = None
  if _text(fields.get('created_at')):
    parsed = parse_time(_text(fields['created_at']))
    if parsed is None:
      return Rejection(SCHEMA_VIOLATION,
                       f'created_at is not an ISO-8601 timestamp: {fields["created_at"]!r}')
    created_at = schemas.datetime_to_micros(parsed)
  return {
      'customer_id': customer_id,
      'email_sha256': hash_email(email) if email else None,
      'first_name': _text(fields.get('first_name')) or None,
      'country': (_text(fields.get('country')) or '').upper() or None,
      'language': (_text(fields.get('language')) or '').lower() or None,
      'email_opt_in': opt_in,
      'created_at': created_at,
      'loyalty_tier': _text(fields.get('loyalty_tier')) or None,
  }


def parse_product(fields: dict[str, Any]) -> dict | Rejection:
  """One catalog row -> product record or Rejection."""
  product_id = _text(fields.get('product_id'))
  if not product_id:
    return Rejection(SCHEMA_VIOLATION, 'product_id is missing or empty')
  price = None
  if _text(fields.get('price')):
    try:
      price = decimal.Decimal(_text(fields['price']))
    except decimal.InvalidOperation:
      return Rejection(SCHEMA_VIOLATION, f'price is not a number: {fields["price"]!r}')
    if not price.is_finite() or price < 0:
      return Rejection(SCHEMA_VIOLATION, f'price must be a finite number >= 0: {fields["price"]!r}')
  in_stock = _bool(fields.get('in_stock'), default=True)
  if isinstance(in_stock, Rejection):
    return Rejection(SCHEMA_VIOLATION, f'in_stock {in_stock.message}')
  return {
      'product_id': product_id,
      'sku': _text(fields.get('sku')) or None,
      'name': _text(fields.get('name')) or None,
      'category': _text(fields.get('category')) or None,
      'brand': _text(fields.get('brand')) or None,
      'price': None if price is None else float(price.quantize(decimal.Decimal('0.01'))),
      'currency': (_text(fields.get('currency')) or 'USD').upper(),
      'in_stock': in_stock,
      'url': _text(fields.get('url')) or None,
      'image_url': _text(fields.get('image_url')) or None,
  }


def _text(value: Any) -> str:
  if value is None:
    return ''
  return value.strip() if isinstance(value, str) else str(value)


def _bool(value: Any, default: bool) -> bool | Rejection:
  if isinstance(value, bool):
    return value
  text = _text(value).lower()
  if not text:
    return default
  if text in _TRUE:
    return True
  if text in _FALSE:
    return False
  return Rejection(SCHEMA_VIOLATION, f'is not a boolean: {value!r}')
