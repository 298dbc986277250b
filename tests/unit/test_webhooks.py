import random

import pytest

from connector import triggers, webhooks
from connector.config import ConfigError

SECRET = b'whsec-0123456789abcdef'


def test_signed_headers_verify_and_tampering_or_age_fails():
  body = b'{"trigger_id": "t1"}'
  headers = webhooks.headers(SECRET, 't1', body, now=1_800_000_000)
  assert headers[webhooks.ID_HEADER] == headers['Idempotency-Key'] == 't1'
  assert headers[webhooks.SIGNATURE_HEADER].startswith('v1=')
  assert webhooks.verify(SECRET, headers, body, now=1_800_000_100)
  assert not webhooks.verify(SECRET, headers, body + b'x', now=1_800_000_100)
  assert not webhooks.verify(b'other-secret-0123456', headers, body, now=1_800_000_100)
  assert not webhooks.verify(SECRET, headers, body, now=1_800_000_301)  # replayed too late
  assert not webhooks.verify(SECRET, {}, body)
  lower = {k.lower(): v for k, v in headers.items()}
  assert webhooks.verify(SECRET, lower, body, now=1_800_000_000)  # header names are case-free


@pytest.mark.parametrize('status, verdict', [
    (200, 'delivered'), (204, 'delivered'), (400, 'dead'), (401, 'dead'), (404, 'dead'),
    (408, 'retry'), (429, 'retry'), (500, 'retry'), (503, 'retry'), (301, 'dead')])
def test_classify(status, verdict):
  assert webhooks.classify(status) == verdict


def test_retry_after_and_backoff_bounds():
  assert webhooks.retry_after('3', cap=60) == 3.0
  assert webhooks.retry_after('600', cap=60) == 60.0
  assert webhooks.retry_after('Wed, 21 Oct 2026 07:28:00 GMT', cap=60) is None
  assert webhooks.retry_after(None, cap=60) is None
  rng = random.Random(1)
  for attempt in range(10):
    assert 0 <= webhooks.backoff(attempt, 0.5, 30, rng) <= min(30, 0.5 * 2 ** attempt)


def test_worker_settings_need_subscription_url_dead_letter_and_a_secret():
  with pytest.raises(ConfigError, match='TRIGGERS_SUBSCRIPTION'):
    triggers.WorkerSettings.from_env({})
  base = {'TRIGGERS_SUBSCRIPTION': 's', 'TRIGGERS_WEBHOOK_URL': 'http://127.0.0.1:1/h',
          'TRIGGERS_DEAD_LETTER_TOPIC': 't'}
  with pytest.raises(ConfigError, match='16\\+ characters'):
    triggers.WorkerSettings.from_env({**base, 'TRIGGERS_SIGNING_SECRET': 'short'})
  settings = triggers.WorkerSettings.from_env({**base, 'TRIGGERS_SIGNING_SECRET': 'x' * 20})
  assert settings.max_attempts == 8 and 'x' * 20 not in repr(settings)
