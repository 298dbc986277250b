"""Audience member listings: the request's parts, checked, and the page cursor. Pure functions.

    GET /v1/audiences/{key}/members?limit=N&cursor=C

A key is an audience key of the definitions file (docs/AUDIENCES.md); the connector cannot know
which keys are defined (the file is the pipeline's), so a well-formed key nobody is in lists no
one. The cursor is the last id of the previous page, base64url without padding: opaque to the
ESP, and one exact encoding per id, so anything else is refused rather than read as some other
position.
"""
from __future__ import annotations

import base64
import binascii
import re

from connector import shaping

# The pipeline's KEY_PATTERN (transforms/rules/audiences/definitions.py), repeated here because
# that module needs the pipeline's YAML and CEL libraries and the connector deploys without them;
# tests/unit/test_connector_audiences.py checks that the two stay the same.
KEY_PATTERN = re.compile(r'[a-z][a-z0-9_]{0,62}')
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_LIMIT = re.compile(r'[0-9]{1,9}')
# The longest cursor an id can have: MAX_ID_LENGTH characters of up to 4 UTF-8 bytes each.
MAX_CURSOR_LENGTH = -(-shaping.MAX_ID_LENGTH * 4 * 4 // 3)
_CURSOR = re.compile(r'[A-Za-z0-9_-]+')


def check_key(key: str) -> None:
  if not KEY_PATTERN.fullmatch(key):
    raise shaping.BadRequest('audience key must match [a-z][a-z0-9_]{0,62}')


def parse_limit(raw: str | None) -> int:
  """`?limit=N` -> N, DEFAULT_LIMIT when absent; a whole number from 1 to MAX_LIMIT."""
  if raw is None:
    return DEFAULT_LIMIT
  if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIMIT:
    raise shaping.BadRequest(f'limit must be a whole number from 1 to {MAX_LIMIT}')
  return int(raw)


def encode_cursor(customer_id: str) -> str:
  return base64.urlsafe_b64encode(customer_id.encode()).rstrip(b'=').decode('ascii')


def decode_cursor(raw: str | None) -> str | None:
  """`?cursor=C` -> the last customer id of the previous page (None when absent: the first page).
  Only what encode_cursor gives for a valid customer id is a cursor: an empty one too is refused,
  so a client that echoes a missing next_cursor back as `cursor=` fails instead of looping."""
  if raw is None:
    return None
  customer_id = None
  if len(raw) <= MAX_CURSOR_LENGTH and _CURSOR.fullmatch(raw):
    try:
      customer_id = base64.urlsafe_b64decode(raw + '=' * (-len(raw) % 4)).decode('utf-8')
    except (binascii.Error, UnicodeDecodeError):
      customer_id = None
  if customer_id is None or encode_cursor(customer_id) != raw:
    raise shaping.BadRequest('cursor is not one this endpoint gave')
  try:
    shaping.check_customer_id(customer_id)
  except shaping.BadRequest:
    raise shaping.BadRequest('cursor is not one this endpoint gave') from None
  return customer_id


def page(audience: str, ids: list[str], limit: int) -> dict:
  """The answer for `ids`, the store's up to limit + 1 ids after the cursor: one more than a page
  says whether another page follows, so the last page says so itself (no empty extra page)."""
  members = ids[:limit]
  more = len(ids) > limit
  return {'audience': audience, 'members': members,
          'next_cursor': encode_cursor(members[-1]) if more else None}
