"""The profile change rule (transforms/rules/changes.py): what a write changed, flattened."""
import datetime as dt

import pytest

import schemas
from transforms.rules import changes

T1 = dt.datetime(2026, 11, 1, 9, 30, 0, 123456, tzinfo=dt.timezone.utc)
T2 = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)


def doc(**overrides):
  base = {'customer_id': 'c1', 'segment': 'active', 'last_event_at': T1, 'version': 7,
          'updated_at': T2, 'top_categories': ['shoes'],
          'cart': {'item_count': 1, 'value': 9.5, 'updated_at': T1},
          'traits': {'ltv_90d': 10.0}, 'audiences': ['vip']}
  return {**base, **overrides}


def test_flatten_is_one_level_and_leaves_out_what_is_not_content():
  assert changes.flatten(doc()) == {
      'segment': 'active', 'last_event_at': T1.isoformat(), 'top_categories': ['shoes'],
      'cart.item_count': 1, 'cart.value': 9.5, 'cart.updated_at': T1.isoformat(),
      'traits.ltv_90d': 10.0}


def unchanged(stored, new):
  return changes.profile_change('c1', stored, new, 99, 1) is None


def test_a_firestore_timestamp_equals_the_rendered_datetime():
  from google.api_core.datetime_helpers import DatetimeWithNanoseconds
  stored = DatetimeWithNanoseconds(2026, 11, 1, 9, 30, 0, 123456, tzinfo=dt.timezone.utc)
  assert unchanged(doc(last_event_at=stored), doc())
  other_zone = T1.astimezone(dt.timezone(dt.timedelta(hours=2)))
  assert unchanged(doc(last_event_at=other_zone), doc())


def test_no_change_ignores_version_and_updated_at_but_not_audiences():
  assert unchanged(doc(version=1, updated_at=None), doc())
  assert not unchanged(doc(audiences=[]), doc())
  assert unchanged(None, None)
  assert not unchanged(None, doc())


def test_the_change_holds_only_changed_fields_and_audience_moves():
  new = doc(segment='vip', cart={'item_count': 2, 'value': 9.5}, audiences=['big_spenders'])
  change = changes.profile_change('c1', doc(), new, 8, 1_700_000_000_000_000)
  assert schemas.profile_change_validator()(change) == change
  assert change['changed'] == {'segment': 'vip', 'cart.item_count': 2, 'cart.updated_at': None}
  assert change['audiences'] == {'entered': ['big_spenders'], 'exited': ['vip']}
  assert change['version'] == 8 and not change['deleted']
  assert change['last_event_at'] == T1.isoformat()
  assert change['change_id'] == changes.change_id('c1', 8)
  assert change['written_at'] == '2023-11-14T22:13:20+00:00'


def test_a_new_document_changes_every_field_and_a_deletion_exits_every_audience():
  created = changes.profile_change('c1', None, doc(), 1, 1)
  assert created['changed'] == changes.flatten(doc())
  assert created['audiences'] == {'entered': ['vip'], 'exited': []}
  deleted = changes.profile_change('c1', doc(), None, 9, 1)
  assert deleted['deleted'] and deleted['changed'] == {} and deleted['last_event_at'] is None
  assert deleted['audiences'] == {'entered': [], 'exited': ['vip']}
  assert schemas.profile_change_validator()(deleted) == deleted
  assert changes.profile_change('c1', doc(), doc(version=99), 100, 1) is None


@pytest.mark.parametrize('stored, now, expected', [
    (None, 50, 50), (7, 50, 50), (50, 50, 51), (100, 50, 101), (True, 50, 50), ('9', 5, 5)])
def test_next_version_is_strictly_increasing_and_follows_the_clock(stored, now, expected):
  assert changes.next_version(stored, now) == expected


def test_change_id_depends_on_customer_and_version_only():
  assert changes.change_id('c1', 5) == changes.change_id('c1', 5)
  assert len({changes.change_id('c1', 5), changes.change_id('c1', 6),
              changes.change_id('c2', 5)}) == 3
