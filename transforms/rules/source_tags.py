"""The `source` tag an input record carries into the warehouse (the `source` column of `events`
and `dead_letter`). Pure functions, no Beam.

`file:<path>` for a record read from a file. A Pub/Sub message is `pubsub:<name>` when its
`source` attribute (set by the collector from the write key: `web`, `server`, ...) is a valid
name, else `pubsub`: a missing or bad attribute never costs the event its place in the
warehouse, only the name.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

PUBSUB = 'pubsub'
# The Pub/Sub message attribute naming where the event came from.
SOURCE_ATTRIBUTE = 'source'
MAX_NAME_CHARS = 64
_NAME = re.compile(r'[A-Za-z0-9_.\-]{1,%d}' % MAX_NAME_CHARS)


def file_source(path: str) -> str:
  """The tag of a record read from the file at `path`."""
  return f'file:{path}'


def is_source_name(value: Any) -> bool:
  """Whether `value` can name a source: 1 to 64 characters of A-Z, a-z, 0-9, `_`, `.` and `-`."""
  return isinstance(value, str) and _NAME.fullmatch(value) is not None


def pubsub_source(attributes: Mapping[str, Any] | None) -> str:
  """The tag of a Pub/Sub message with these attributes (None: none): `pubsub:<name>` for a valid
  `source` attribute, else `pubsub`."""
  name = (attributes or {}).get(SOURCE_ATTRIBUTE)
  return f'{PUBSUB}:{name}' if is_source_name(name) else PUBSUB


def has_bad_source(attributes: Mapping[str, Any] | None) -> bool:
  """Whether the attributes carry a `source` attribute that is not a valid name (the message is
  tagged `pubsub`, and the read counts it)."""
  return SOURCE_ATTRIBUTE in (attributes or {}) and not is_source_name(
      attributes[SOURCE_ATTRIBUTE])
