"""The sync worker's pure rules: config validation, coalescing, deltas, the token bucket."""
import pytest

from connector.config import ConfigError
from connector.sync import config, plan
from connector.sync.limiter import TokenBucket

ENV = {'BRAZE_KEY': 'k' * 20}


def raw_config(**destination):
  return {'subscription': 'projects/demo-local/subscriptions/sync',
          'dead_letter_topic': 'projects/demo-local/topics/sync-dead',
          'destinations': [{'name': 'braze', 'type': 'braze', 'base_url': 'http://127.0.0.1:1',
                            'api_key_env': 'BRAZE_KEY', 'fields': {'segment': 'segment',
                                                                   'traits.ltv': 'ltv'},
                            'audiences': ['vip'], 'rate_limit': {'requests_per_second': 5},
                            **destination}]}


def test_a_good_config_parses_with_defaults_and_keeps_the_key_out_of_repr():
  parsed = config.parse(raw_config(), ENV)
  destination = parsed.destinations[0]
  assert parsed.project == 'demo-local' and parsed.batch_seconds == 1.0
  assert destination.fields == (('segment', 'segment'), ('traits.ltv', 'ltv'))
  assert destination.rate_limit == config.RateLimit(5.0, 1)
  assert destination.api_key == 'k' * 20 and 'k' * 20 not in repr(parsed)
  assert destination.attribute_of_audience('vip') == 'audience_vip'


@pytest.mark.parametrize('overrides, message', [
    ({'type': 'mailchimp'}, "type 'mailchimp' is not one of"),
    ({'api_key_env': 'MISSING_KEY'}, 'MISSING_KEY (its API key) is not set'),
    ({'fields': {'no such field!': 'x'}}, 'is not a document field'),
    ({'fields': {'segment': 'a', 'country': 'a'}}, 'two fields map to the same ESP attribute'),
    ({'rate_limit': {'requests_per_second': 0}}, 'requests_per_second must be > 0'),
    ({'rate_limit': None}, '`rate_limit` is required'),
    ({'audience_attribute': 'aud_{name}'}, 'must contain {key}'),
    ({'base_url': 'ftp://x'}, 'must be an http(s) URL'),
    ({'fields': {}, 'audiences': []}, 'nothing to sync'),
    ({'colour': 'red'}, 'unknown key(s) colour'),
])
def test_a_bad_destination_is_refused_naming_the_key(overrides, message):
  with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')
                     .replace('{', r'\{').replace('}', r'\}')):
    config.parse(raw_config(**overrides), ENV)


def change(customer, version, changed=None, entered=(), exited=(), deleted=False):
  return {'customer_id': customer, 'version': version, 'changed': changed or {},
          'audiences': {'entered': list(entered), 'exited': list(exited)}, 'deleted': deleted}


def test_coalescing_keeps_each_fields_newest_value_whatever_the_order():
  changes = [change('c1', 1, {'segment': 'new', 'traits.ltv': 1}, entered=['vip']),
             change('c1', 3, {'segment': 'vip'}),
             change('c1', 2, {'segment': 'active', 'traits.ltv': 2}, exited=['vip'])]
  for order in (changes, changes[::-1], [changes[1], changes[0], changes[2]]):
    pending = plan.coalesce(order)['c1']
    assert pending.fields == {'segment': ('vip', 3), 'traits.ltv': (2, 2)}
    assert pending.audiences == {'vip': (False, 2)} and pending.version == 3


def test_attributes_follow_the_mapping_and_the_audiences_the_destination_receives():
  destination = config.parse(raw_config(), ENV).destinations[0]
  pending = plan.coalesce([change('c1', 4, {'segment': 'vip', 'country': 'FR'},
                                  entered=['vip', 'other'])])['c1']
  assert plan.attributes(pending, destination) == {'segment': ('vip', 4),
                                                   'audience_vip': (True, 4)}


def test_delta_sends_only_new_values_of_newer_versions():
  stored = {'segment': (plan.value_hash('vip'), 5), 'ltv': (plan.value_hash(1), 2)}
  d = plan.delta({'segment': ('vip', 6), 'ltv': (3, 4), 'new': ('x', 1), 'old': ('y', 1)},
                 {**stored, 'old': (plan.value_hash('z'), 9)})
  assert d.send == {'ltv': 3, 'new': 'x'}
  assert d.unchanged == 1 and d.older == 1
  assert d.state['segment'] == (plan.value_hash('vip'), 6)  # same value, newer version kept
  # Replaying what was delivered sends nothing.
  again = plan.delta({'ltv': (3, 4), 'new': ('x', 1)}, d.state)
  assert again.send == {} and again.older == 2


class FakeClock:
  """Virtual time for the bucket: sleep advances it (pure logic, no real waiting)."""

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now

  def sleep(self, seconds):
    self.now += seconds


@pytest.mark.parametrize('rate, burst', [(10, 1), (10, 5), (2.5, 3)])
def test_the_bucket_never_allows_more_than_burst_plus_rate_times_t(rate, burst):
  clock = FakeClock()
  bucket = TokenBucket(rate, burst, clock=clock, sleep=clock.sleep)
  starts = []
  for _ in range(200):
    bucket.acquire()
    starts.append(clock.now)
  for i, start in enumerate(starts):
    for j in range(i, len(starts)):
      assert j - i + 1 <= burst + rate * (starts[j] - start) + 1e-6
  # And it is not slower than the rate either: 200 requests take (200 - burst) / rate.
  assert starts[-1] == pytest.approx((200 - burst) / rate)


def test_the_example_config_is_valid_for_every_vendor():
  import pathlib

  from connector.sync.__main__ import vendors
  example = pathlib.Path(__file__).parents[2] / 'sync.example.yaml'
  env = {'BRAZE_REST_API_KEY': 'b' * 32, 'KLAVIYO_PRIVATE_API_KEY': 'pk_' + 'k' * 32,
         'ITERABLE_API_KEY': 'i' * 32}
  parsed = config.load(example, env)
  assert [d.type for d in parsed.destinations] == ['braze', 'klaviyo', 'iterable']
  assert set(vendors(parsed)) == {'braze', 'klaviyo', 'iterable'}


def test_a_mapping_a_vendor_refuses_fails_at_start():
  from connector.sync.__main__ import vendors
  parsed = config.parse(raw_config(fields={'segment': '$segment'}), ENV)
  with pytest.raises(ConfigError, match=r"destination 'braze': attribute '\$segment'"):
    vendors(parsed)
