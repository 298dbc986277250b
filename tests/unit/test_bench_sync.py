"""The pure parts of the sync benchmark (bench/sync_load.py): the rate-limit check it applies at
the receiver, its summary line, and the changes it publishes (valid, every version new)."""
from __future__ import annotations

import pytest

import schemas
from bench import sync_load


def test_a_token_bucket_sequence_holds():
  # Burst 5 at once, then one every 50 ms: exactly burst + rate * T at 20 requests/s.
  starts = [0.0] * 5 + [0.05 * k for k in range(1, 40)]
  assert sync_load.rate_limit_violation(starts, rate=20, burst=5) is None
  # Arrival jitter within the 20 ms slack still holds.
  jittered = [t + (0.015 if k % 2 else 0.0) for k, t in enumerate(starts)]
  assert sync_load.rate_limit_violation(jittered, rate=20, burst=5) is None
  assert sync_load.rate_limit_violation([], rate=20, burst=5) is None
  assert sync_load.rate_limit_violation([3.0], rate=20, burst=1) is None


def test_a_sequence_over_the_limit_is_reported_with_its_worst_interval():
  # One request too many in the first burst.
  assert sync_load.rate_limit_violation([0.0] * 6, rate=20, burst=5) == (0, 5, pytest.approx(0.6))
  # In step with the bucket for a second, then 10 requests within 90 ms: the worst interval is
  # that run of 10 (any longer one that ends there is as much over, none more).
  starts = [0.05 * k for k in range(20)] + [1.0 + 0.01 * k for k in range(10)]
  i, j, excess = sync_load.rate_limit_violation(starts, rate=20, burst=5)
  assert (i, j) == (20, 29) and excess == pytest.approx(10 - 5 - 20 * (0.09 + 0.02))
  # Order of the input does not matter.
  assert sync_load.rate_limit_violation(list(reversed(starts)), rate=20, burst=5)[:2] == (20, 29)
  # 10/s, burst 1: a second request is due 100 ms after the first, 80 ms with the 20 ms slack.
  assert sync_load.rate_limit_violation([0.0, 0.079], rate=10, burst=1) is not None
  assert sync_load.rate_limit_violation([0.0, 0.081], rate=10, burst=1) is None


def test_the_summary_line():
  assert sync_load.summary_line(1234.4, 14.0, True) == (
      'sync: 1,234 changes/s, 14.0 requests per 1,000 changes, rate limit held')
  assert sync_load.summary_line(812.6, 13.333, False) == (
      'sync: 813 changes/s, 13.3 requests per 1,000 changes, rate limit EXCEEDED')


def test_the_published_changes_are_valid_and_every_version_changes_every_attribute():
  validate = schemas.profile_change_validator()
  for version in (1, 2):
    validate(sync_load.change('s000001', version))
  one, two = sync_load.expected('s000001', 1), sync_load.expected('s000001', 2)
  assert set(one) == set(sync_load.FIELDS.values()) | {'audience_vip'}
  assert all(one[a] != two[a] for a in one)
  assert one['audience_vip'] is True and two['audience_vip'] is False
