"""What is derived from a serving document: its warehouse snapshot row and its cart trigger.
Pure functions, no Beam."""
from __future__ import annotations

import datetime as dt
import hashlib

import orjson

import schemas

CART_ABANDONED = 'cart_abandoned'
# Streaming: the Pub/Sub publish time (micros) of the event behind a document's `last_event_at`,
# carried from the live fold to the Firestore writer, which measures the document's freshness
# with it and drops it: it is never stored, served or compared (transforms/sinks/firestore.py).
PUBLISHED_AT = '_published_at'


def document_json(document: dict) -> str:
  """The document as JSON text, times as ISO-8601."""
  return orjson.dumps(document, default=_default).decode()


def _default(value):
  if isinstance(value, dt.datetime):
    return value.isoformat()
  raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def _micros(value: dt.datetime | None) -> int | None:
  return None if value is None else schemas.datetime_to_micros(value)


def profile_row(customer_id: str, document: dict, written_at: int) -> dict:
  """A `customer_profiles` row (schemas/customer_profiles.avsc) for one document write."""
  return {
      'customer_id': customer_id,
      'updated_at': written_at,
      'last_event_at': _micros(document['last_event_at']),
      'segment': document['segment'],
      'orders_count': document['orders']['count'],
      'lifetime_value': document['orders']['lifetime_value'],
      'cart_item_count': document['cart']['item_count'],
      'cart_value': document['cart']['value'],
      'cart_abandoned': document['cart']['abandoned'],
      'top_categories': list(document['top_categories']),
      'document': document_json(document),
  }


def trigger_id(customer_id: str, cart_updated_at: int) -> str:
  """One id per abandoned cart: the same customer and last cart change give the same id."""
  return hashlib.sha256(f'{CART_ABANDONED}:{customer_id}:{cart_updated_at}'.encode()).hexdigest()[:32]


def cart_trigger(document: dict, detected_at: int) -> dict | None:
  """A `cart_triggers` record (schemas/cart_triggers.avsc) when the document's cart is
  abandoned, else None."""
  cart = document['cart']
  if not cart['abandoned']:
    return None
  updated = _micros(cart['updated_at'])
  return {
      'trigger_id': trigger_id(document['customer_id'], updated),
      'trigger_type': CART_ABANDONED,
      'customer_id': document['customer_id'],
      'cart_updated_at': updated,
      'detected_at': detected_at,
      'cart': orjson.loads(document_json(cart)),
  }
