"""Serving documents shaped for merge tags. Pure functions.

Only the contract's served fields (schemas/customer_document.schema.json) leave the connector,
times as ISO-8601 strings; `fields` projects, `limit_recommendations` trims.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Any, Iterable

import orjson

import schemas

MAX_ID_LENGTH = 256
# Longer than every served field name joined: anything longer is not a projection.
MAX_FIELDS_LENGTH = 1024
# Firestore reserves document ids of this form; asking for one fails the whole lookup batch.
_RESERVED_ID = re.compile(r'__.*__', re.DOTALL)


class BadRequest(ValueError):
  """A request the connector refuses with 400, with a message safe to return."""


def served_fields() -> tuple[str, ...]:
  return schemas.served_document_fields()


def parse_fields(raw: str | None) -> tuple[str, ...]:
  """`?fields=a,b` -> the requested served fields (all when absent)."""
  if raw is None or not raw.strip():
    return served_fields()
  if len(raw) > MAX_FIELDS_LENGTH:
    raise BadRequest(f'fields must be at most {MAX_FIELDS_LENGTH} characters')
  requested = tuple(dict.fromkeys(f.strip() for f in raw.split(',') if f.strip()))
  unknown = [f for f in requested if f not in served_fields()]
  if unknown:
    raise BadRequest(f'unknown field(s): {", ".join(sorted(unknown))[:200]}')
  if 'customer_id' not in requested:
    requested = ('customer_id',) + requested
  return requested


def check_customer_id(customer_id: str) -> None:
  if not customer_id or len(customer_id) > MAX_ID_LENGTH:
    raise BadRequest(f'customer id must be 1 to {MAX_ID_LENGTH} characters')
  if '/' in customer_id or customer_id in ('.', '..') or not customer_id.isprintable():
    raise BadRequest('customer id contains characters that cannot name a customer')
  if _RESERVED_ID.fullmatch(customer_id):
    raise BadRequest('customer id has a form Firestore reserves (__name__)')


def iso_time(value: dt.datetime) -> str:
  """How the connector serves a time: ISO-8601 in UTC with a `Z`."""
  return value.astimezone(dt.timezone.utc).isoformat().replace('+00:00', 'Z')


def _plain(value: Any) -> Any:
  if isinstance(value, dt.datetime):
    return iso_time(value)
  if isinstance(value, dict):
    # Nested keys sorted: Firestore gives a map's fields back in no set order, and the bytes
    # (and so the ETag) of an answer must depend on the document only, wherever it was read.
    return {k: _plain(value[k]) for k in sorted(value)}
  if isinstance(value, list):
    return [_plain(v) for v in value]
  return value


def shape(document: dict, fields: Iterable[str], limit_recommendations: int | None = None) -> dict:
  """The response object for one stored document."""
  shaped = {name: _plain(document.get(name)) for name in fields}
  if limit_recommendations is not None and isinstance(shaped.get('recommendations'), list):
    shaped['recommendations'] = shaped['recommendations'][:limit_recommendations]
  return shaped


def render(body: Any) -> bytes:
  return orjson.dumps(body)


def etag(body: bytes) -> str:
  return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
