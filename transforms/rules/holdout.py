"""The global holdout (control) group: which customers get no personalized email. Pure, no I/O.

A customer's bucket is the first 8 bytes of SHA-256 over `"{salt}:{customer_id}"`, big-endian,
modulo 10,000; the customer is held out when `bucket < percent * 100`. It depends on nothing but
the id and the two settings, so batch, streaming and the connector assign every customer alike,
run after run (docs/ENGAGEMENT.md). Changing the salt reshuffles everyone: keep it for as long
as an experiment's results are compared.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math

BUCKETS = 10_000
MAX_PERCENT = 50
DEFAULT_SALT = 'global-control'


def bucket(customer_id: str, salt: str = DEFAULT_SALT) -> int:
  digest = hashlib.sha256(f'{salt}:{customer_id}'.encode()).digest()
  return int.from_bytes(digest[:8], 'big') % BUCKETS


@dataclasses.dataclass(frozen=True)
class Holdout:
  """`percent` of customers (0 to 50, in steps of 0.01; 0 is off) held out under `salt`."""
  percent: float = 0
  salt: str = DEFAULT_SALT

  def __post_init__(self):
    if isinstance(self.percent, bool) or not (
        isinstance(self.percent, (int, float)) and math.isfinite(self.percent)
        and 0 <= self.percent <= MAX_PERCENT):
      raise ValueError(f'--holdout_percent must be a number from 0 to {MAX_PERCENT}, got '
                       f'{self.percent!r}')
    if round(self.percent * 100, 6) != round(self.percent * 100):
      raise ValueError(f'--holdout_percent has at most two decimals (a bucket is 0.01%), got '
                       f'{self.percent}')
    if not isinstance(self.salt, str) or not self.salt:
      raise ValueError('--holdout_salt must be a non-empty string')

  @property
  def threshold(self) -> int:
    return round(self.percent * 100)

  def held_out(self, customer_id: str) -> bool:
    return self.threshold > 0 and bucket(customer_id, self.salt) < self.threshold
