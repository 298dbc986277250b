"""Dead-letter records (shape: `schemas/dead_letter.avsc`). Pure functions, no Beam."""
from __future__ import annotations

import base64
import dataclasses
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class Rejection:
  """Why a record could not be used: a failure type (the dead-letter `failure_type`) and a
  human-readable message naming the field at fault."""
  failure_type: str
  message: str


def dead_letter(failure_type: str,
                message: str,
                step: str,
                payload: bytes | str,
                source: str,
                failed_at: int,
                attributes: Mapping[str, str] | None = None) -> dict:
  """A dead-letter record carrying the original payload losslessly.

  Text stays readable in the warehouse; bytes that are not valid UTF-8 are kept as base64 and
  flagged by `payload_encoding`, so nothing is lost or silently replaced.
  """
  if isinstance(payload, bytes):
    try:
      text, encoding = payload.decode('utf-8'), 'utf-8'
    except UnicodeDecodeError:
      text, encoding = base64.b64encode(payload).decode('ascii'), 'base64'
  else:
    text, encoding = payload, 'utf-8'
  return {
      'failure_type': failure_type,
      'error_message': message,
      'step': step,
      'payload': text,
      'payload_encoding': encoding,
      'attributes': dict(attributes) if attributes else None,
      'source': source,
      'failed_at': failed_at,
  }


def original_payload(record: dict) -> bytes:
  """The exact bytes a dead-letter record was made from."""
  if record['payload_encoding'] == 'base64':
    return base64.b64decode(record['payload'])
  return record['payload'].encode('utf-8')
