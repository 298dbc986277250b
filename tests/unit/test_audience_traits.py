"""Computed traits' state, every kind (transforms.rules.audiences.traits).

Each kind and its empty case, skipped values, ties, the caps, windows at their edges, decay and
next_change, then property tests: the same events in any arrival order and any split and merge
give the same result at every reference, equal to the semantics computed from the events
themselves (within the bounds), with the caps shrunk too so that their eviction paths run; last
the bounds on a long, busy history.
"""
import contextlib
import datetime as dt
import decimal
import fractions
import math
import pickle
import random
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.rules.audiences import traits
from transforms.rules.audiences.traits import DAY, KINDS

T0 = 1_790_000_000 * 1_000_000 // DAY * DAY  # a UTC midnight (2026-09-21), epoch microseconds
D = decimal.Decimal


def fold(kind, events, within_days=None):
  """A state of `events`, each (event_time, message_id, value) or (offset_days, value)."""
  state = traits.new_state(kind, within_days is not None, within_days)
  for i, event in enumerate(events):
    if len(event) == 2:
      event = (T0 + round(event[0] * DAY), f'm{i}', event[1])
    traits.add(state, kind, *event)
  return state


def value(kind, events, within_days=None, reference=None):
  return traits.result(fold(kind, events, within_days), kind, reference, within_days)


def same(a, b):
  """Equal and of the same types all the way down (True is not 1, 3.0 is not 3)."""
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
  return type(a) is type(b) and a == b


# --- every kind, and its empty case -------------------------------------------------------------

EMPTY = {'count': 0, 'sum': 0, 'min': None, 'max': None, 'avg': None, 'first': None, 'last': None,
         'most_frequent': None, 'unique_count': 0, 'unique_list': []}


@pytest.mark.parametrize('kind', KINDS)
def test_empty_states(kind):
  assert same(value(kind, []), EMPTY[kind])
  assert same(value(kind, [], 7, T0), EMPTY[kind])
  # Events all outside the window: the empty result too.
  assert same(value(kind, [(0, 5)], 7, T0 + 7 * DAY), EMPTY[kind])


@pytest.mark.parametrize('kind, expected', [
    ('count', 6), ('sum', 14), ('min', 1), ('max', 5), ('avg', fractions.Fraction(14, 4)),
    ('first', 4), ('last', 'x'), ('most_frequent', 4), ('unique_count', 5),
    ('unique_list', [1, 4, 5, 'x', 'y'])])
def test_every_kind(kind, expected):
  events = [(0, 4), (1, 'y'), (2, 4), (3, 1), (4, 5), (5, 'x')]
  expected = float(expected) if isinstance(expected, fractions.Fraction) else expected
  assert same(value(kind, events), expected)


def test_sums_and_averages_are_exact_and_numbers_canonical():
  assert same(value('sum', [(0, 0.1), (1, 0.2)]), 0.3)             # not 0.30000000000000004
  assert same(value('sum', [(0, 1.5), (1, 1.5)]), 3)               # a whole sum is an int
  assert same(value('sum', [(0, D('19.99')), (1, 5)]), 24.99)
  assert same(value('avg', [(0, 1), (1, 2)]), 1.5)
  assert same(value('avg', [(0, 1), (1, 3)]), 2)                   # a whole average is an int
  assert same(value('avg', [(0, 1), (1, 1), (2, 2)]), 4 / 3)       # rounded once
  assert same(value('max', [(0, 3.0), (1, 2)]), 3)                 # 3.0 is the number 3
  assert same(value('min', [(0, D('2.50')), (1, 7)]), 2.5)
  assert same(value('sum', [(0, 2 ** 70)]), float(2 ** 70))         # beyond int64: a float
  assert same(value('unique_list', [(0, 3), (1, 3.0), (2, D('3.00'))]), [3])
  assert same(value('most_frequent', [(0, 2.0), (1, 2), (2, 'b'), (3, 'b'), (4, 'a')]), 2)
  assert same(value('sum', [(0, 1.5e308), (1, 1.5e308)]), None)    # beyond the float range
  assert same(value('first', [(0, dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc))]),
              '2026-01-02T03:04:05.000000Z')


@pytest.mark.parametrize('kind', ('sum', 'min', 'max', 'avg'))
def test_numeric_kinds_skip_and_count_what_is_not_a_number(kind):
  unusable = ['7', True, False, None, [1], {'a': 1}, float('nan'), float('inf'), D('NaN'),
              D('1e500'), D('1e-500'), 10 ** 500, b'1', dt.timedelta(1)]
  state = fold(kind, [(i, v) for i, v in enumerate(unusable)] + [(20, 2), (21, 4.5)])
  assert state['skipped'] == len(unusable)
  assert same(traits.result(state, kind, None, None),
              {'sum': 6.5, 'min': 2, 'max': 4.5, 'avg': 3.25}[kind])
  windowed = fold(kind, [(i, v) for i, v in enumerate(unusable)], 30)
  assert windowed['skipped'] == len(unusable)
  assert same(traits.result(windowed, kind, T0 + 25 * DAY, 30), EMPTY[kind])


@pytest.mark.parametrize('kind', ('first', 'last', 'most_frequent', 'unique_count', 'unique_list'))
def test_scalar_kinds_take_any_scalar_and_skip_the_rest(kind):
  state = fold(kind, [(0, None), (1, [1, 2]), (2, {'a': 1}), (3, b'x'), (4, float('nan')),
                      (5, True), (6, 'a'), (7, 2.5)])
  assert state['skipped'] == 5
  assert same(traits.result(state, kind, None, None),
              {'first': True, 'last': 2.5, 'most_frequent': True, 'unique_count': 3,
               'unique_list': [True, 2.5, 'a']}[kind])


def test_count_counts_every_matching_event_whatever_its_value():
  state = fold('count', [(0, None), (1, [1]), (2, 'x')])
  assert (traits.result(state, 'count', None, None), state['skipped']) == (3, 0)


def test_first_and_last_ties_by_message_id():
  at = T0 + DAY
  events = [(at, 'm2', 'b'), (at, 'm1', 'a'), (at, 'm3', 'c'), (at - 1, 'z', 'early'),
            (at + 1, 'a', 'late')]
  for order in (events, events[::-1], events[2:] + events[:2]):
    assert value('first', order) == 'early' and value('last', order) == 'late'
    tied = [e for e in order if e[0] == at]
    assert value('first', tied) == 'a' and value('last', tied) == 'c'
    assert value('first', tied, 1, at) == 'a' and value('last', tied, 1, at) == 'c'


def test_most_frequent_ties_to_the_smallest_value_in_the_total_order():
  assert value('most_frequent', [(0, 'b'), (1, 'a'), (2, 'b'), (3, 'a')]) == 'a'
  assert value('most_frequent', [(0, 'a'), (1, 10), (2, 9.5), (3, 'a'), (4, 10), (5, 9.5)]) == 9.5
  assert value('most_frequent', [(0, 1), (1, True), (2, 'a'), (3, False)]) is False
  assert value('most_frequent', [(0, 'b'), (1, 'a'), (2, 'b')]) == 'b'


def test_unique_list_is_sorted_in_the_total_order_and_capped_at_the_100_smallest():
  assert same(value('unique_list', [(0, 'b'), (1, 2), (2, True), (3, 'a'), (4, 1.5), (5, False),
                                    (6, 'b'), (7, 2.0)]),
              [False, True, 1.5, 2, 'a', 'b'])
  values = list(range(250))
  random.Random(1).shuffle(values)
  listed = value('unique_list', [(i / 1000, v) for i, v in enumerate(values)])
  assert listed == list(range(100))
  assert value('unique_count', [(i / 1000, v) for i, v in enumerate(values)]) == 250


def test_unique_count_is_exact_to_its_cap_then_an_estimate():
  exact = fold('unique_count', [(0, f'v{i}') for i in range(traits.MAX_DISTINCT)] * 2)
  assert traits.result(exact, 'unique_count', None, None) == traits.MAX_DISTINCT
  state = fold('unique_count', [(0, f'v{i}') for i in range(20_000)])
  estimate = traits.result(state, 'unique_count', None, None)
  assert abs(estimate - 20_000) < 0.1 * 20_000
  assert len(state['agg'][0]) == traits.MAX_DISTINCT
  just_over = fold('unique_count', [(0, i) for i in range(traits.MAX_DISTINCT + 1)])
  assert traits.result(just_over, 'unique_count', None, None) > traits.MAX_DISTINCT


def test_most_frequent_counts_only_the_smallest_distinct_values_beyond_its_cap():
  # 'zz' is the most common, but beyond the cap only the MAX_DISTINCT smallest values count.
  events = [(0, f'a{i:05}') for i in range(traits.MAX_DISTINCT + 10)] + [(1, 'zz')] * 5
  events += [(2, 'a00500')]
  for order in (events, events[::-1]):
    state = fold('most_frequent', order)
    assert len(state['agg']) == traits.MAX_DISTINCT
    assert traits.result(state, 'most_frequent', None, None) == 'a00500'
  assert value('most_frequent', events[-6:]) == 'zz'


def test_a_redelivered_event_is_harmless_where_the_state_can_tell_and_counts_twice_elsewhere():
  events = [(T0, 'm1', 5), (T0 + 1, 'm2', 7)]
  twice = events + events[:1]
  for kind in ('min', 'max', 'first', 'last', 'unique_count', 'unique_list'):
    assert same(value(kind, twice), value(kind, events))
  for kind in KINDS:  # windowed: the day's newest events are kept exactly, by key
    assert same(value(kind, twice, 1, T0), value(kind, events, 1, T0))
  assert value('count', twice) == 3  # unwindowed, documented: dedupe is upstream's job


# --- windows: edges, decay, next_change ---------------------------------------------------------

@pytest.mark.parametrize('within_days', (7, 0.5, 1.25))
@pytest.mark.parametrize('kind, events, inside, outside', [
    ('count', [5], 1, 0),
    ('sum', [5], 5, 0),
    ('min', [5], 5, None),
    ('avg', [5], 5, None),
    ('first', ['edge'], 'edge', None),
    ('unique_list', ['edge'], ['edge'], []),
])
def test_an_event_exactly_at_the_window_edge_is_out_and_one_microsecond_newer_is_in(
    kind, events, inside, outside, within_days):
  window = round(within_days * DAY)
  at = T0 + DAY // 3 + 17
  state = fold(kind, [(at, 'm1', v) for v in events], within_days)
  assert same(traits.result(state, kind, at + window, within_days), outside)
  assert same(traits.result(state, kind, at + window - 1, within_days), inside)
  assert same(traits.result(state, kind, at, within_days), inside)
  assert traits.next_change(state, kind, within_days, at) == at + window
  assert traits.next_change(state, kind, within_days, at + window) is None


def test_windowed_traits_decay_as_their_events_age_out():
  days = [0, 1, 1.5, 3, 6]
  events = [(T0 + round(d * DAY), f'm{i}', v)
            for i, (d, v) in enumerate(zip(days, [4, 9, 'x', 2, 7]))]
  expected = {  # reference (days after T0) -> (count, sum, max, first, last, unique_list)
      6: (5, 22, 9, 4, 7, [2, 4, 7, 9, 'x']),
      7: (4, 18, 9, 9, 7, [2, 7, 9, 'x']),
      8.25: (3, 9, 7, 'x', 7, [2, 7, 'x']),
      9: (2, 9, 7, 2, 7, [2, 7]),
      12: (1, 7, 7, 7, 7, [7]),
      13: (0, 0, None, None, None, []),
  }
  for kind_index, kind in enumerate(('count', 'sum', 'max', 'first', 'last', 'unique_list')):
    state = fold(kind, events, 7)
    for reference, results in expected.items():
      got = traits.result(state, kind, T0 + round(reference * DAY), 7)
      assert same(got, results[kind_index]), (kind, reference)


def test_next_change_is_the_exact_time_the_result_next_changes():
  w = 7 * DAY
  events = [(T0, 'a', 3), (T0 + 10, 'b', 9), (T0 + 20, 'c', 3), (T0 + DAY, 'd', 1)]
  states = {kind: fold(kind, events, 7) for kind in KINDS}
  assert traits.next_change(states['count'], 'count', 7, T0 + DAY) == T0 + w
  # max: 3 aging out leaves 9; 9 aging out changes it.
  assert traits.next_change(states['max'], 'max', 7, T0 + DAY) == T0 + 10 + w
  # min: 1 stays until T0 + DAY + w; the 3s do not move it.
  assert traits.next_change(states['min'], 'min', 7, T0 + DAY) == T0 + DAY + w
  # unique_count: 3 at T0 leaving keeps {9, 3, 1}; 9 leaving changes it.
  assert traits.next_change(states['unique_count'], 'unique_count', 7, T0) == T0 + 10 + w
  # most_frequent: 3 (twice) until the first 3 leaves, then the tie 1, 3, 9 -> 1.
  assert traits.next_change(states['most_frequent'], 'most_frequent', 7, T0) == T0 + w
  assert traits.next_change(states['last'], 'last', 7, T0) == T0 + DAY + w
  zeros = fold('sum', [(0, 0), (1, 0)], 7)
  assert traits.next_change(zeros, 'sum', 7, T0) is None
  assert traits.next_change(fold('count', [(0, 1)]), 'count', None, T0) is None
  assert traits.next_change(fold('count', [], 7), 'count', 7, T0) is None


def test_days_no_future_window_can_see_are_dropped_and_results_stay_exact():
  state = fold('count', [(0, None), (3, None), (10, None), (10.5, None)], 2)
  assert sorted(state['days']) == [(T0 // DAY) + 10]
  traits.add(state, 'count', T0 + DAY, 'late', None)  # for a dropped day: dropped too
  assert sorted(state['days']) == [(T0 // DAY) + 10]
  # Exact from a day before the newest event on.
  assert traits.result(state, 'count', T0 + round(9.5 * DAY), 2) == 2


def test_a_busy_day_keeps_its_newest_events_exactly_and_ages_the_older_out_together():
  n = traits.MAX_EXACT_PER_DAY
  at = [T0 + i * 1000 for i in range(n + 20)]
  state = fold('count', [(t, f'm{i:04}', None) for i, t in enumerate(at)], 1)
  bucket = state['days'][T0 // DAY]
  assert len(bucket['entries']) == n and bucket['rest'] == 20 and bucket['rest_at'] == at[19]
  # The older 20 count until the newest of them ages out, then the newest n exactly.
  assert traits.result(state, 'count', at[0] + DAY, 1) == n + 20
  assert traits.result(state, 'count', at[19] + DAY - 1, 1) == n + 20
  assert traits.result(state, 'count', at[19] + DAY, 1) == n
  assert traits.result(state, 'count', at[20] + DAY, 1) == n - 1
  assert traits.next_change(state, 'count', 1, at[0] + DAY) == at[19] + DAY


# --- the API's checks ---------------------------------------------------------------------------

def test_bad_arguments_fail_loudly():
  with pytest.raises(ValueError, match='unknown trait kind'):
    traits.new_state('median', False)
  for within_days in (None, 0, -1, True, float('inf'), '7'):
    with pytest.raises(ValueError, match='within_days'):
      traits.new_state('count', True, within_days)
  with pytest.raises(ValueError):
    traits.new_state('count', False, 7)
  windowed = traits.new_state('count', True, 7)
  with pytest.raises(ValueError, match='reference'):
    traits.result(windowed, 'count', None, 7)
  with pytest.raises(ValueError, match='window'):
    traits.result(windowed, 'count', T0, 30)
  with pytest.raises(ValueError, match='window'):
    traits.result(traits.new_state('count', False), 'count', T0, 7)
  with pytest.raises(ValueError, match='window'):
    traits.merge(windowed, traits.new_state('count', True, 30), 'count')
  with pytest.raises(ValueError, match='kinds'):
    traits.merge(traits.new_state('count', False), traits.new_state('sum', False), 'count')
  with pytest.raises(TypeError):
    traits.add(windowed, 'count', float(T0), 'm', None)


def test_a_state_fits_only_the_kind_and_window_it_was_made_for():
  assert traits.fits(traits.new_state('sum', True, 7), 'sum', 7.0)
  assert traits.fits(traits.new_state('sum', False), 'sum', None)
  assert not traits.fits(traits.new_state('sum', True, 7), 'sum', 30)
  assert not traits.fits(traits.new_state('sum', True, 7), 'sum', None)
  assert not traits.fits(traits.new_state('sum', False), 'sum', 7)
  assert not traits.fits(traits.new_state('sum', False), 'avg', None)


@pytest.mark.parametrize('kind', KINDS)
def test_states_pickle_and_merge_leaves_its_inputs_alone(kind):
  rng = random.Random(kind)
  events = [(T0 + rng.randrange(3 * DAY), f'm{i}', rng.choice([1, 2.5, 'a', 'b', None]))
            for i in range(300)]
  for within_days in (None, 2):
    a = fold(kind, events[:150], within_days)
    b = fold(kind, events[150:], within_days)
    a_bytes, b_bytes = pickle.dumps(a), pickle.dumps(b)
    merged = traits.merge(a, b, kind)
    traits.add(merged, kind, T0 + DAY, 'new', 1)
    assert pickle.dumps(a) == a_bytes and pickle.dumps(b) == b_bytes
    assert pickle.loads(pickle.dumps(merged)) == merged


# --- properties: any order, any grouping, the semantics -----------------------------------------

VALUES = st.one_of(
    st.integers(-3, 3), st.sampled_from([0.5, 1.25, -2.0, 3.0, 1e-3]),
    st.sampled_from([D('2.5'), D('0.1'), D('3.00')]), st.sampled_from(['a', 'b', 'c', '']),
    st.booleans(), st.none(), st.just([1]))
# Offsets within a day: its edges, and a few shared times so ties by message id matter.
OFFSETS = st.one_of(st.sampled_from([0, 1, DAY // 2, DAY - 1]), st.integers(0, DAY - 1))


@st.composite
def histories(draw):
  """(events, within_days, references): events (event_time, message_id, value) over a few days,
  and reference times at, and a microsecond either side of, where events leave the window."""
  n = draw(st.integers(0, 30))
  events = [(T0 + draw(st.integers(0, 5)) * DAY + draw(OFFSETS), f'm{draw(st.integers(0, 5))}-{i}',
             draw(VALUES)) for i in range(n)]
  within_days = draw(st.sampled_from([None, 1, 2, 0.5, 1.75]))
  window = round((within_days or 1) * DAY)
  edges = sorted({e[0] + window + d for e in events for d in (-1, 0, 1)})
  references = draw(st.lists(st.sampled_from(edges), max_size=6)) if edges else []
  references += [T0 + draw(st.integers(-DAY, 9 * DAY)) for _ in range(2)]
  return events, within_days, references


def fold_any_way(kind, events, within_days, rng):
  """The events folded in a random order into random parts, merged in a random grouping."""
  events = list(events)
  rng.shuffle(events)
  parts = [traits.new_state(kind, within_days is not None, within_days)
           for _ in range(rng.randint(1, 4))]
  for event in events:
    traits.add(rng.choice(parts), kind, *event)
  while len(parts) > 1:
    a = parts.pop(rng.randrange(len(parts)))
    b = parts.pop(rng.randrange(len(parts)))
    parts.append(traits.merge(a, b, kind) if rng.random() < 0.5 else traits.merge(b, a, kind))
  return parts[0]


def readings(state, kind, within_days, references):
  if within_days is None:
    return [traits.result(state, kind, None, None)]
  return [(traits.result(state, kind, r, within_days),
           traits.next_change(state, kind, within_days, r)) for r in references]


SMALL_CAPS = dict(MAX_EXACT_PER_DAY=3, MAX_DISTINCT=4, MAX_LIST=3)


def caps(small):
  """The module's caps shrunk, so that a few events run every eviction path."""
  return mock.patch.multiple(traits, **SMALL_CAPS) if small else contextlib.nullcontext()


@pytest.mark.parametrize('small_caps', (False, True), ids=('caps', 'small_caps'))
@pytest.mark.parametrize('kind', KINDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), seed=st.integers(0, 2 ** 32))
def test_any_order_and_any_merge_give_the_same_results(kind, small_caps, history, seed):
  events, within_days, references = history
  rng = random.Random(seed)
  with caps(small_caps):
    sorted_state = traits.new_state(kind, within_days is not None, within_days)
    for event in sorted(events):
      traits.add(sorted_state, kind, *event)
    expected = readings(sorted_state, kind, within_days, references)
    for _ in range(3):
      state = fold_any_way(kind, events, within_days, rng)
      got = readings(state, kind, within_days, references)
      assert all(same(g, e) for g, e in zip(got, expected)), (got, expected)
      assert state['skipped'] == sorted_state['skipped']


def semantics(kind, events, reference, within_days):
  """A trait computed from the events themselves, as the module docstring defines it."""
  if within_days is not None:
    events = [e for e in events if e[0] > reference - round(within_days * DAY)]
  if kind == 'count':
    return len(events)
  def canonical(v):
    v = float(v) if isinstance(v, D) else v
    return int(v) if isinstance(v, float) and v.is_integer() else v
  def number(v):
    return isinstance(v, (int, float, D)) and not isinstance(v, bool)
  scalars = [(e[0], e[1], canonical(e[2])) for e in events
             if number(e[2]) or isinstance(e[2], (str, bool))]
  numbers = [e[2] for e in events if number(e[2])]
  exact = sum((D(repr(v)) if isinstance(v, float) else D(v) for v in numbers), D(0))
  order = lambda v: (0 if isinstance(v, bool) else 2 if isinstance(v, str) else 1, v)
  whole = lambda x: int(x) if x == int(x) else float(x)
  if kind == 'sum':
    return whole(exact)
  if kind == 'avg':
    return whole(fractions.Fraction(exact) / len(numbers)) if numbers else None
  if kind in ('min', 'max'):
    return (min if kind == 'min' else max)(map(canonical, numbers), default=None)
  if kind in ('first', 'last'):
    picked = (min if kind == 'first' else max)(scalars, key=lambda e: e[:2], default=None)
    return None if picked is None else picked[2]
  distinct = sorted({order(e[2]) for e in scalars})
  if kind == 'unique_count':
    return len(distinct)
  if kind == 'unique_list':
    return [v for _, v in distinct[:traits.MAX_LIST]]
  counts = {}
  for e in scalars:
    counts[order(e[2])] = counts.get(order(e[2]), 0) + 1
  return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][1] if counts else None


@pytest.mark.parametrize('kind', KINDS)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories())
def test_results_are_the_semantics_from_a_day_before_the_newest_event_on(kind, history):
  events, within_days, references = history
  state = fold(kind, events, within_days)
  newest = max((e[0] for e in events), default=T0)
  for reference in [r for r in references if r >= newest - traits.PRUNE_SLACK] or [None]:
    if within_days is not None and reference is None:
      continue
    assert same(traits.result(state, kind, reference, within_days),
                semantics(kind, events, reference, within_days)), reference


@pytest.mark.parametrize('small_caps', (False, True), ids=('caps', 'small_caps'))
@pytest.mark.parametrize('kind', KINDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories())
def test_next_change_is_the_first_reference_with_another_result(kind, small_caps, history):
  events, within_days, references = history
  if within_days is None:
    return
  window = round(within_days * DAY)
  with caps(small_caps):
    state = fold(kind, events, within_days)
    for reference in references:
      now = traits.result(state, kind, reference, within_days)
      change = traits.next_change(state, kind, within_days, reference)
      # The result can only change where an event (or a busy day's older events) leaves.
      leaving = sorted({e[0] + window for e in events if e[0] + window > reference})
      unchanged = [t for t in leaving if change is None or t < change]
      assert all(same(traits.result(state, kind, t, within_days), now) for t in unchanged)
      if change is not None:
        assert change in leaving
        assert not same(traits.result(state, kind, change, within_days), now)
        assert same(traits.result(state, kind, change - 1, within_days), now)


# --- bounds -------------------------------------------------------------------------------------

def test_a_windowed_state_stays_bounded_over_a_long_busy_history():
  rng = random.Random(15)
  within_days, n, days = 30, 100_000, 400
  times = sorted(T0 + rng.randrange(days * DAY) for _ in range(n))
  events = [(t, f'm{i}', f'v{rng.randrange(500)}') for i, t in enumerate(times)]
  state = traits.new_state('unique_count', True, within_days)
  largest = 0
  for i, event in enumerate(events):
    traits.add(state, 'unique_count', *event)
    if i % 5000 == 0:
      largest = max(largest, len(pickle.dumps(state)))
  assert len(state['days']) <= math.ceil(within_days) + 3
  for bucket in state['days'].values():
    assert len(bucket['entries']) <= traits.MAX_EXACT_PER_DAY
    assert bucket['rest'] is None or len(bucket['rest'][0]) <= traits.MAX_DISTINCT
  assert largest < 2_000_000, largest  # bytes, whatever the history's length
  # Exact but for a busy day's older events, which leave up to a day late.
  reference = times[-1]
  got = traits.result(state, 'unique_count', reference, within_days)
  window = within_days * DAY
  inside = len({v for t, _, v in events if t > reference - window})
  with_a_day_more = len({v for t, _, v in events if t > reference - window - DAY})
  assert inside <= got <= with_a_day_more
  assert traits.next_change(state, 'unique_count', within_days, reference) > reference
