"""Webhook signing, verification and retry rules. Pure functions.

Signature scheme (like the common webhook schemes, e.g. Stripe's and Standard Webhooks'):

    X-Webhook-Id:         the trigger_id (also sent as Idempotency-Key): the same on every retry
    X-Webhook-Timestamp:  Unix seconds when this attempt was signed
    X-Webhook-Signature:  v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>

A receiver recomputes the HMAC over the raw body, compares in constant time, and rejects
timestamps older than its tolerance (replay protection).
"""
from __future__ import annotations

import hashlib
import hmac
import random
import time
from typing import Mapping

SIGNATURE_HEADER = 'X-Webhook-Signature'
TIMESTAMP_HEADER = 'X-Webhook-Timestamp'
ID_HEADER = 'X-Webhook-Id'
DELIVERED, RETRY, DEAD = 'delivered', 'retry', 'dead'


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
  digest = hmac.new(secret, str(timestamp).encode() + b'.' + body, hashlib.sha256).hexdigest()
  return f'v1={digest}'


def headers(secret: bytes, trigger_id: str, body: bytes, now: float | None = None) -> dict:
  timestamp = int(time.time() if now is None else now)
  return {'Content-Type': 'application/json', ID_HEADER: trigger_id,
          'Idempotency-Key': trigger_id, TIMESTAMP_HEADER: str(timestamp),
          SIGNATURE_HEADER: sign(secret, timestamp, body)}


def verify(secret: bytes, received: Mapping[str, str], body: bytes, tolerance: float = 300,
           now: float | None = None) -> bool:
  """What a receiver does: signature over the raw body, and a fresh timestamp."""
  lowered = {k.lower(): v for k, v in received.items()}
  try:
    timestamp = int(lowered[TIMESTAMP_HEADER.lower()])
  except (KeyError, ValueError):
    return False
  if abs((time.time() if now is None else now) - timestamp) > tolerance:
    return False
  expected = sign(secret, timestamp, body)
  return hmac.compare_digest(expected.encode(), lowered.get(SIGNATURE_HEADER.lower(), '').encode())


def classify(status: int) -> str:
  """2xx delivered; 408, 429 and 5xx retried; any other answer is permanent (dead-lettered)."""
  if 200 <= status < 300:
    return DELIVERED
  if status in (408, 429) or status >= 500:
    return RETRY
  return DEAD


def retry_after(value: str | None, cap: float) -> float | None:
  """Seconds from a Retry-After header (delta-seconds form), capped; None when absent/unusable."""
  if not value:
    return None
  try:
    return min(max(float(value), 0.0), cap)
  except ValueError:
    return None


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
  """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
  return (rng or random).uniform(0, min(cap, base * (2 ** attempt)))
