"""Audience membership changes (transforms/rules/audiences/membership.py)."""
from transforms.rules.audiences import membership


def test_changes_are_the_difference_sorted_by_audience():
  assert membership.changes('c1', ['a', 'b'], ['b', 'c'], 7) == [
      {'customer_id': 'c1', 'audience': 'a', 'change': 'exited', 'changed_at': 7},
      {'customer_id': 'c1', 'audience': 'c', 'change': 'entered', 'changed_at': 7}]
  assert membership.changes('c1', ['a'], ['a'], 7) == []
  assert membership.changes('c1', [], [], 7) == []


def test_current_members_take_each_pairs_latest_change():
  rows = [('c1', 'a', 'entered', 1), ('c1', 'a', 'exited', 5), ('c1', 'b', 'entered', 2),
          ('c2', 'a', 'exited', 1), ('c2', 'a', 'entered', 3), ('c3', 'a', 'exited', 4)]
  assert membership.current_members(rows) == {'c1': {'b'}, 'c2': {'a'}}
  assert membership.current_members(reversed(rows)) == {'c1': {'b'}, 'c2': {'a'}}


def test_a_rerun_over_what_the_table_says_changes_nothing():
  first = membership.changes('c1', [], ['a', 'b'], 10)
  recorded = membership.current_members(
      (c['customer_id'], c['audience'], c['change'], c['changed_at']) for c in first)
  assert membership.changes('c1', recorded['c1'], ['a', 'b'], 10) == []


def test_segment_events_are_segments_audience_shape_with_a_stable_message_id():
  entered = {'customer_id': 'c1', 'audience': 'games_fans', 'change': 'entered',
             'changed_at': 1_763_000_000_000_000}
  event = membership.segment_event(entered)
  assert event['type'] == 'track' and event['event'] == 'Audience Entered'
  assert event['userId'] == 'c1' and event['timestamp'] == '2025-11-13T02:13:20Z'
  assert event['properties'] == {'audience_key': 'games_fans', 'games_fans': True}
  assert membership.segment_event(dict(entered))['messageId'] == event['messageId']
  exited = membership.segment_event({**entered, 'change': 'exited'})
  assert exited['event'] == 'Audience Exited' and exited['properties']['games_fans'] is False
  assert exited['messageId'] != event['messageId']
