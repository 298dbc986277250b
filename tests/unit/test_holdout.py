"""The global holdout assignment (transforms/rules/holdout.py)."""
import hashlib

import pytest

from transforms.rules.holdout import BUCKETS, Holdout, bucket

IDS = [f'cust-{i:05d}' for i in range(10_000)]


def test_the_bucket_is_the_documented_formula():
  for customer_id in IDS[:50] + ['', 'ü-ñ', 'a:b']:
    digest = hashlib.sha256(f'global-control:{customer_id}'.encode()).digest()
    assert bucket(customer_id) == int.from_bytes(digest[:8], 'big') % 10000
  assert bucket('c1', 'other') == int.from_bytes(
      hashlib.sha256(b'other:c1').digest()[:8], 'big') % BUCKETS


@pytest.mark.parametrize('percent', [1, 2.5, 5, 10])
def test_the_share_is_within_half_a_point_at_ten_thousand_customers(percent):
  share = 100 * sum(Holdout(percent).held_out(i) for i in IDS) / len(IDS)
  assert abs(share - percent) <= 0.5, share


@pytest.mark.parametrize('percent', [25, 50])
def test_large_shares_are_within_three_standard_deviations(percent):
  """At 10,000 customers the binomial standard deviation of the share is 0.43 points at 25% and
  0.5 at 50%: no assignment can promise half a point there (these ids give 25.60 and 50.76), so
  large shares are held to three standard deviations."""
  p = percent / 100
  sd = 100 * (p * (1 - p) / len(IDS)) ** 0.5
  share = 100 * sum(Holdout(percent).held_out(i) for i in IDS) / len(IDS)
  assert abs(share - percent) <= 3 * sd, share


def test_assignment_is_stable_and_nested():
  """The same id, salt and percent give the same answer every time; a larger percent keeps
  everyone a smaller one held out (buckets below a threshold stay below a higher one)."""
  small, large = Holdout(5), Holdout(10)
  first = [small.held_out(i) for i in IDS]
  assert first == [Holdout(5).held_out(i) for i in IDS]
  assert all(large.held_out(i) for i, held in zip(IDS, first) if held)


def test_off_holds_out_nobody_and_a_new_salt_draws_a_new_group():
  assert not any(Holdout(0).held_out(i) for i in IDS)
  a = {i for i in IDS if Holdout(10, 'a').held_out(i)}
  b = {i for i in IDS if Holdout(10, 'b').held_out(i)}
  assert a != b and len(a & b) < len(a) / 2


@pytest.mark.parametrize('percent', [-1, 50.5, 100, float('nan'), float('inf'), 10.001, True,
                                     '10'])
def test_bad_percents_name_the_option(percent):
  with pytest.raises(ValueError, match='--holdout_percent'):
    Holdout(percent)


def test_bad_salt():
  with pytest.raises(ValueError, match='--holdout_salt'):
    Holdout(10, '')
