"""The lines the batch shuffles carry inside their chunks (transforms/shards.py), one encode/decode
pair per format; nothing else splits these bytes.

A chunk joins lines with newlines, so no line holds a raw newline: every field is JSON (orjson
escapes tabs and newlines inside strings) or a record encoded by `schemas.encode_record` (JSON
too). Fields are separated by tabs and an encoded record comes last, so a step reads the small
fields in front of it (a message id, a customer id, a product list) without decoding the record
(docs/PERFORMANCE.md says what that saves).
"""
from __future__ import annotations

import decimal

import orjson


# Copy lines (the batch dedupe): `[message_id, *preference]` as JSON, a tab, the encoded event.

def encode_copy(message_id: str, preference: tuple, record: bytes) -> bytes:
  """One copy of an event: its message id and preference key (`dedupe.preference_key`, JSON
  values only), then the encoded event."""
  return orjson.dumps([message_id, *preference]) + b'\t' + record


def decode_copy(line: bytes) -> tuple[str, tuple, bytes]:
  """The inverse of `encode_copy`: (message id, preference key, encoded event)."""
  cut = line.index(b'\t')
  message_id, *preference = orjson.loads(line[:cut])
  return message_id, tuple(preference), line[cut + 1:]


# Fold lines (the batch group by customer): the customer id (or, before stitching, the
# anonymous id) as a JSON string, a tab, the products the event shows interest in as a JSON list
# (what popularity reads), a tab, the encoded fold input.

def encode_fold(key: str, products: list, record: bytes) -> bytes:
  """One fold input under `key`: `products` (`profile.interacted_products`), then the encoded
  fold input (`profile.fold_input`)."""
  return orjson.dumps(key) + b'\t' + orjson.dumps(products) + b'\t' + record


def decode_fold(line: bytes) -> tuple[str, list, bytes]:
  """The inverse of `encode_fold`: (key, products, encoded fold input)."""
  key, products, record = line.split(b'\t', 2)
  return orjson.loads(key), [] if products == b'[]' else orjson.loads(products), record


# Link lines (the batch stitching join): `[anonymous_id, at, user_id]` as JSON.

def encode_link(anonymous_id: str, candidate: tuple[int, str]) -> bytes:
  """A link candidate of an anonymous id: `(event time, user id)` (`identity.link`)."""
  return orjson.dumps([anonymous_id, candidate[0], candidate[1]])


def decode_link(line: bytes) -> tuple[str, tuple[int, str]]:
  """The inverse of `encode_link`: (anonymous id, (event time, user id))."""
  anonymous_id, at, user_id = orjson.loads(line)
  return anonymous_id, (at, user_id)


# Partial lines (the batch hourly activity): `[hour, customer, identified, event name, currency,
# count, revenue as text or null]` as JSON.

def encode_partial(slot: tuple, totals: tuple) -> bytes:
  """A partial sum: `slot` is `(hour start micros, (customer, identified, event name,
  currency))`, `totals` is `(count, revenue Decimal or None)`."""
  (hour, (customer, identified, name, currency)), (count, revenue) = slot, totals
  return orjson.dumps([hour, customer, identified, name, currency, count,
                       None if revenue is None else str(revenue)])


def decode_partial(line: bytes) -> tuple[tuple, tuple]:
  """The inverse of `encode_partial`: (slot, totals), the revenue a Decimal again."""
  hour, customer, identified, name, currency, count, revenue = orjson.loads(line)
  return ((hour, (customer, identified, name, currency)),
          (count, None if revenue is None else decimal.Decimal(revenue)))
