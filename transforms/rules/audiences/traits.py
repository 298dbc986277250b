"""Computed traits: the state of one trait of one customer, every kind. Pure, no Beam.

`new_state(kind, windowed, within_days)`, then `add(state, kind, event_time, message_id, value)`
per matching event; `result(state, kind, reference, within_days)` reads the trait at a reference
time, `next_change` says when a windowed result next changes as events age out (the streaming
fold's timer) and `merge` combines partial states (combiners); `fits` says whether a stored state
was made for a definition's kind and window (one kept across a changed definition starts again).
Times are epoch microseconds. A state is a plain picklable dict; `state['skipped']` counts the
values it could not use.

Semantics (Segment's computed traits; docs/AUDIENCES.md): `count` matching events (0 when none);
`sum`, `min`, `max`, `avg` of numeric values (`sum` 0 when none, the others None); `first` /
`last` the value of the earliest / latest event by (event_time, message_id); `most_frequent` the
most common value, ties to the smallest; `unique_count` (0 when none); `unique_list` the distinct
values sorted, the smallest MAX_LIST (`[]` when none). A window (`within_days`) keeps only events
with event_time strictly newer than `reference - within_days` (no upper bound: an event newer than
the reference counts), so a windowed trait decays as its events age out.

Values. A number is an int, float or Decimal, never a bool; non-finite numbers, and numbers beyond
10^400 in magnitude or finer than 10^-400, are unusable. Numbers are canonical: a whole number
within +-2^63 is an int (3.0 and 3 are one value, 3), any other a float, and every number a trait
gives follows the same rule (a sum or an average too; a sum beyond the float range gives None).
`sum` and `avg` are exact (Decimal, a float read via its repr; the average divided exactly and
rounded once). `min` and `max` take numbers; the other kinds take any JSON scalar: a bool, a number
or a string (a datetime becomes its UTC RFC 3339 text with microseconds and `Z`). A value that is
None, non-scalar (list, map, bytes, duration) or, for the numeric kinds, not a number is skipped
and counted in `state['skipped']` (every skipped value, windowed or not; `count` skips nothing).
Scalars are totally ordered by (type rank, value): false < true < every number (by value) <
every string (by code point); "smallest" and "sorted" use that order.

Order. Any arrival order of the same events, and any grouping of partial states in `merge`, gives
the same state up to dict order, hence the same result at every reference: every rule is set-like
(a sum, a minimum by key, the k smallest of a set, the newest k of a day). An event applied twice
(a redelivery: same event_time and message_id) changes nothing for `min`, `max`, `first`, `last`,
`unique_count` and `unique_list`, nor, in a windowed state, while it is one of its day's newest
MAX_EXACT_PER_DAY events; otherwise (`count`, `sum`, `avg`, `most_frequent`) it counts twice:
deduplication is upstream's job and keeping every message id would not be bounded.

Bounds, per trait per customer, and what is approximate beyond them:
- Unwindowed: one number or entry for `count`, `sum`, `avg`, `min`, `max`, `first`, `last`;
  `most_frequent` keeps counts for the MAX_DISTINCT smallest distinct values only (the only
  bounded top-k that arrival order cannot change): beyond that many distinct values the result is
  the most common of those. `unique_count` keeps the MAX_DISTINCT smallest 64-bit hashes of the
  values (a K-minimum-values sketch): exact up to MAX_DISTINCT distinct values (up to a hash
  collision, about n^2 / 2^65), beyond that an estimate with a standard error of about 3%, never
  below MAX_DISTINCT + 1. `unique_list` keeps the MAX_LIST smallest values, which is its result.
- Windowed: one bucket per UTC day of event time, each holding its day's newest MAX_EXACT_PER_DAY
  events exactly (time, message id, value) and one unwindowed aggregate of the day's older events
  with the time of the newest of them. Results are exact at the window's edge (an event at exactly
  `reference - within_days` is out, one microsecond newer is in) for up to MAX_EXACT_PER_DAY
  matching events a day; on a busier day the older events age out together, when the newest of
  them does (up to a day late). A day that no reference from a day before the newest event on can
  see (it ended at or before newest - within_days - 1 day) is dropped, with any event that comes
  for it later: results are exact for references from `newest event time - 1 day` on. So at most
  ceil(within_days) + 3 buckets, each at most MAX_EXACT_PER_DAY events plus the unwindowed bound.
"""
from __future__ import annotations

import bisect
import datetime as dt
import decimal
import fractions
import hashlib
import heapq
import math
from typing import Any

KINDS = ('count', 'sum', 'min', 'max', 'avg', 'first', 'last', 'most_frequent', 'unique_count',
         'unique_list')
DAY = 86_400_000_000  # microseconds
MAX_LIST = 100            # unique_list's values
MAX_DISTINCT = 1000       # most_frequent's counted values, unique_count's exact reach (hashes)
MAX_EXACT_PER_DAY = 100   # windowed: exact events per UTC day
PRUNE_SLACK = DAY         # windowed: results stay exact for references this far before the newest

_NUMERIC = ('sum', 'min', 'max', 'avg')
_INT_RANGE = 2 ** 63
_FLOAT_MAX = int(1.7976931348623157e308)
_MAX_EXPONENT = 400
# Exact decimal arithmetic: additions never round (operands are limited to 10^+-400).
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN,
                         traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow])
_SKIP = object()
_ZERO = decimal.Decimal(0)


def new_state(kind: str, windowed: bool, within_days: float | None = None) -> dict:
  """An empty trait state. A windowed state is told its `within_days` here: it drops the days no
  future window can see as events come (the bound), and `result` checks it is read with the same
  window."""
  _check_kind(kind)
  if windowed:
    return {'kind': kind, 'window': _window(within_days), 'newest': None, 'skipped': 0,
            'days': {}}
  if within_days is not None:
    raise ValueError('within_days is for a windowed trait')
  return {'kind': kind, 'skipped': 0, 'agg': _empty(kind)}


def fits(state: dict, kind: str, within_days: float | None) -> bool:
  """Whether `state` was made for `kind` and `within_days` (None: unwindowed). A state kept
  across a change of its definition (streaming state through an update) does not fit: reading or
  merging it would fail or mislead, so it starts again."""
  window = None if within_days is None else _window(within_days)
  return state.get('kind') == kind and state.get('window') == window


def add(state: dict, kind: str, event_time: int, message_id: str, value: Any) -> dict:
  """Folds one matching event into `state` (updated in place and returned). `value` is the plain
  Python value of the definition's `value` expression (ignored by `count`; None: no value)."""
  if not isinstance(event_time, int) or isinstance(event_time, bool):
    raise TypeError(f'event_time must be epoch microseconds (int), not {event_time!r}')
  item = _prepare(kind, value)
  if item is _SKIP:
    state['skipped'] += 1
  if 'days' not in state:
    if item is not _SKIP:
      state['agg'] = _agg_add(kind, state['agg'], event_time, message_id, item)
    return state
  if state['newest'] is None or event_time > state['newest']:
    state['newest'] = event_time
    _prune(state)
  if item is _SKIP:
    return state
  day = event_time // DAY
  if day < _live_from(state):
    return state
  bucket = state['days'].get(day)
  if bucket is None:
    bucket = state['days'][day] = {'entries': [], 'rest': None, 'rest_at': None}
  _bucket_add(kind, bucket, event_time, message_id, item)
  return state


def result(state: dict, kind: str, reference: int | None, within_days: float | None) -> Any:
  """The trait's value at `reference` (epoch microseconds). An unwindowed state ignores the
  reference (None is fine); a windowed one needs it, and `within_days` must be its own."""
  _check_window(state, within_days)
  if 'days' not in state:
    return _finish(kind, state['agg'])
  return _finish(kind, _collect(kind, _items_after(state, _cutoff(state, reference))))


def next_change(state: dict, kind: str, within_days: float | None, reference: int) -> int | None:
  """The earliest reference time after `reference` at which the result differs from the result at
  `reference` because events aged out; None when it never will (unwindowed, no events, or no
  event's leaving changes it: a sum of zeros). Exact, and a function of the state alone."""
  _check_window(state, within_days)
  if 'days' not in state:
    return None
  cutoff = _cutoff(state, reference)
  by_time: dict[int, list] = {}
  for group in _items_after(state, cutoff):
    by_time.setdefault(group[0], []).append(group)
  times = sorted(by_time)
  if not times:
    return None
  # after[i]: the result once times[0..i] have aged out; built from the newest time down.
  scan = _ModeScan(by_time.values()) if kind == 'most_frequent' else _Scan(kind)
  after = [None] * len(times)
  after[-1] = scan.value()
  for i in range(len(times) - 1, 0, -1):
    scan.add(by_time[times[i]])
    after[i - 1] = scan.value()
  scan.add(by_time[times[0]])
  now = scan.value()
  for i, value in enumerate(after):
    if not _same(value, now):
      return times[i] + state['window']
  return None


def merge(a: dict, b: dict, kind: str) -> dict:
  """The state of both partial states' events (a new state; `a` and `b` are left as they are)."""
  if a.get('window') != b.get('window') or a.get('kind') != b.get('kind'):
    raise ValueError('merging trait states of different kinds or windows')
  if 'days' not in a:
    return {'kind': kind, 'skipped': a['skipped'] + b['skipped'],
            'agg': _agg_merge(kind, a['agg'], b['agg'])}
  newest = [n for n in (a['newest'], b['newest']) if n is not None]
  out = {'kind': kind, 'window': a['window'], 'newest': max(newest) if newest else None,
         'skipped': a['skipped'] + b['skipped'], 'days': {}}
  live_from = _live_from(out)
  for day in set(a['days']) | set(b['days']):
    if day < live_from:
      continue
    first, second = a['days'].get(day), b['days'].get(day)
    if first is None:
      first, second = second, None
    bucket = {'entries': list(first['entries']), 'rest_at': first['rest_at'],
              'rest': None if first['rest'] is None else _agg_merge(kind, _empty(kind),
                                                                      first['rest'])}
    if second is not None:
      for t, message_id, item in second['entries']:
        _bucket_add(kind, bucket, t, message_id, item)
      if second['rest'] is not None:
        rest = _empty(kind) if bucket['rest'] is None else bucket['rest']
        bucket['rest'] = _agg_merge(kind, rest, second['rest'])
        bucket['rest_at'] = _max(bucket['rest_at'], second['rest_at'])
    out['days'][day] = bucket
  return out


# --- values ---------------------------------------------------------------------------------

def _prepare(kind: str, value: Any) -> Any:
  """What the state keeps of a value for `kind`: None for count, the exact Decimal for sum and
  avg, the canonical number for min and max, the canonical scalar otherwise; _SKIP if unusable."""
  if kind == 'count':
    return None
  if kind in ('sum', 'avg'):
    return _exact(value)
  if kind in _NUMERIC:
    return _number(value)
  return _scalar(value)


def _number(value: Any) -> Any:
  """The canonical number (int when whole within +-2^63, else float), or _SKIP."""
  if isinstance(value, bool) or not isinstance(value, (int, float, decimal.Decimal)):
    return _SKIP
  if _exact(value) is _SKIP:
    return _SKIP
  if isinstance(value, int):
    if abs(value) < _INT_RANGE:
      return value
    return _SKIP if abs(value) > _FLOAT_MAX else _canonical_float(float(value))
  if isinstance(value, decimal.Decimal):
    if value == value.to_integral_value() and abs(value) < _INT_RANGE:
      return int(value)
    return _canonical_float(float(value))
  return _canonical_float(value)


def _canonical_float(value: float) -> Any:
  if not math.isfinite(value):
    return _SKIP
  return int(value) if value.is_integer() and abs(value) < _INT_RANGE else value


def _exact(value: Any) -> Any:
  """The number as an exact Decimal (a float via its repr), or _SKIP."""
  if isinstance(value, bool):
    return _SKIP
  if isinstance(value, int):
    return decimal.Decimal(value) if abs(value) < 10 ** _MAX_EXPONENT else _SKIP
  if isinstance(value, float):
    return decimal.Decimal(repr(value)) if math.isfinite(value) else _SKIP
  if isinstance(value, decimal.Decimal):
    if not value.is_finite():
      return _SKIP
    if not value:
      return _ZERO
    if value.adjusted() > _MAX_EXPONENT or value.as_tuple().exponent < -_MAX_EXPONENT:
      return _SKIP
    return value
  return _SKIP


def _scalar(value: Any) -> Any:
  if isinstance(value, (bool, str)):
    return value
  if isinstance(value, dt.datetime):
    if value.tzinfo is not None:
      value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return value.isoformat(timespec='microseconds') + 'Z'
  return _number(value)


def _order(value: Any) -> tuple:
  """The total order of canonical scalars: bools, then numbers, then strings."""
  if isinstance(value, bool):
    return (0, value)
  if isinstance(value, str):
    return (2, value)
  return (1, value)


def _hash(key: tuple) -> int:
  rank, value = key
  text = value.encode('utf-8', 'surrogatepass') if rank == 2 else repr(value).encode()
  return int.from_bytes(hashlib.blake2b(bytes([rank]) + text, digest_size=8).digest(), 'big')


def _out(number: decimal.Decimal | fractions.Fraction) -> Any:
  """A sum or average as a trait gives it: canonical, None beyond the float range."""
  if number == int(number) and abs(number) < _INT_RANGE:
    return int(number)
  value = float(number)
  return value if math.isfinite(value) else None


def _same(a: Any, b: Any) -> bool:
  """Equal and of the same types (True is not 1 for a trait)."""
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  return type(a) is type(b) and a == b


# --- unwindowed aggregates (a day's older events in a windowed state too) ----------------------

def _empty(kind: str) -> Any:
  if kind == 'count':
    return 0
  if kind == 'sum':
    return _ZERO
  if kind == 'avg':
    return (_ZERO, 0)
  if kind == 'most_frequent':
    return {}               # _order(value) -> count, the MAX_DISTINCT smallest values
  if kind == 'unique_count':
    return [[], False]      # the MAX_DISTINCT smallest hashes, sorted; whether any were dropped
  if kind == 'unique_list':
    return []               # the MAX_LIST smallest _order(value), sorted
  return None               # min, max: the value; first, last: (event_time, message_id, value)


def _agg_add(kind: str, agg: Any, t: int, message_id: str, item: Any) -> Any:
  """`agg` with one more event (containers are updated in place)."""
  if kind == 'count':
    return agg + 1
  if kind == 'sum':
    return _EXACT.add(agg, item)
  if kind == 'avg':
    return (_EXACT.add(agg[0], item), agg[1] + 1)
  if kind == 'min':
    return item if agg is None or item < agg else agg
  if kind == 'max':
    return item if agg is None or item > agg else agg
  if kind in ('first', 'last'):
    return _pick(kind, agg, (t, message_id, item))
  if kind == 'most_frequent':
    key = _order(item)
    if key in agg:
      agg[key] += 1
    elif len(agg) < MAX_DISTINCT:
      agg[key] = 1
    else:
      largest = max(agg)
      if key < largest:
        del agg[largest]
        agg[key] = 1
    return agg
  if kind == 'unique_count':
    _insert_smallest(agg[0], _hash(_order(item)), MAX_DISTINCT, agg)
    return agg
  _insert_smallest(agg, _order(item), MAX_LIST, None)
  return agg


def _insert_smallest(values: list, value: Any, cap: int, sketch: list | None) -> None:
  """Keeps `values` the sorted `cap` smallest distinct values seen (`sketch[1]`: some dropped)."""
  at = bisect.bisect_left(values, value)
  if at < len(values) and values[at] == value:
    return
  values.insert(at, value)
  if len(values) > cap:
    values.pop()
    if sketch is not None:
      sketch[1] = True


def _pick(kind: str, current: tuple | None, entry: tuple) -> tuple:
  """first: the smallest (event_time, message_id), last: the largest; the same key twice (never
  after dedupe) keeps the smaller value, whatever the order."""
  if current is None:
    return entry
  if entry[:2] == current[:2]:
    return entry if _order(entry[2]) < _order(current[2]) else current
  earlier = entry[:2] < current[:2]
  return entry if earlier == (kind == 'first') else current


def _agg_merge(kind: str, a: Any, b: Any) -> Any:
  """The aggregate of both (new containers; `a` and `b` are left as they are)."""
  if kind == 'count':
    return a + b
  if kind == 'sum':
    return _EXACT.add(a, b)
  if kind == 'avg':
    return (_EXACT.add(a[0], b[0]), a[1] + b[1])
  if kind in ('min', 'max'):
    if a is None or b is None:
      return a if b is None else b
    return (min if kind == 'min' else max)(a, b)
  if kind in ('first', 'last'):
    return a if b is None else _pick(kind, a, b)
  if kind == 'most_frequent':
    counts = dict(a)
    for key, n in b.items():
      counts[key] = counts.get(key, 0) + n
    if len(counts) > MAX_DISTINCT:
      counts = {key: counts[key] for key in sorted(counts)[:MAX_DISTINCT]}
    return counts
  if kind == 'unique_count':
    hashes = sorted(set(a[0]) | set(b[0]))
    return [hashes[:MAX_DISTINCT], a[1] or b[1] or len(hashes) > MAX_DISTINCT]
  return sorted(set(a) | set(b))[:MAX_LIST]


def _finish(kind: str, agg: Any) -> Any:
  if kind == 'count':
    return agg
  if kind == 'sum':
    return _out(agg)
  if kind == 'avg':
    return None if agg[1] == 0 else _out(fractions.Fraction(agg[0]) / agg[1])
  if kind in ('min', 'max'):
    return agg
  if kind in ('first', 'last'):
    return None if agg is None else agg[2]
  if kind == 'most_frequent':
    if not agg:
      return None
    return min(agg.items(), key=lambda pair: (-pair[1], pair[0]))[0][1]
  if kind == 'unique_count':
    hashes, dropped = agg
    if not dropped:
      return len(hashes)
    # K-minimum values: (K - 1) / (the K-th smallest hash as a fraction of the hash space).
    return max(MAX_DISTINCT + 1, round((MAX_DISTINCT - 1) * 2 ** 64 / (hashes[-1] + 1)))
  return [key[1] for key in agg]


def _collect(kind: str, groups) -> Any:
  """The aggregate of exact events and day aggregates: for the set-like kinds gathered whole and
  cut to its cap once (the same aggregate as adding them one by one: a value a day's aggregate
  dropped had a cap's worth of smaller values there, so it is beyond the cap of the union)."""
  if kind == 'most_frequent':
    counts: dict = {}
    for group in groups:
      for key, n in _counted(group):
        counts[key] = counts.get(key, 0) + n
    if len(counts) > MAX_DISTINCT:
      counts = {key: counts[key] for key in sorted(counts)[:MAX_DISTINCT]}
    return counts
  if kind == 'unique_count':
    hashes, dropped = set(), False
    for group in groups:
      if group[1] == 'entry':
        hashes.add(_hash(_order(group[2][2])))
      else:
        hashes.update(group[2][0])
        dropped = dropped or group[2][1]
    kept = sorted(hashes)
    return [kept[:MAX_DISTINCT], dropped or len(kept) > MAX_DISTINCT]
  if kind == 'unique_list':
    keys = set()
    for group in groups:
      if group[1] == 'entry':
        keys.add(_order(group[2][2]))
      else:
        keys.update(group[2])
    return sorted(keys)[:MAX_LIST]
  agg = _empty(kind)
  for group in groups:
    agg = _agg_group(kind, agg, group)
  return agg


def _counted(group: tuple):
  """most_frequent: (value key, count) pairs of an exact event or a day's aggregate."""
  if group[1] == 'entry':
    return ((_order(group[2][2]), 1),)
  return group[2].items()


class _Scan:
  """next_change's accumulator: the result of a growing set of groups."""

  def __init__(self, kind: str):
    self.kind, self.agg = kind, _empty(kind)

  def add(self, groups: list) -> None:
    for group in groups:
      self.agg = _agg_group(self.kind, self.agg, group)

  def value(self) -> Any:
    return _finish(self.kind, self.agg)


class _ModeScan:
  """most_frequent's accumulator, in O(log MAX_DISTINCT) a step: the values ranked once, a heap of
  the kept ranks for eviction, the best value updated from what each step touched."""

  def __init__(self, all_groups):
    keys = sorted({key for groups in all_groups for group in groups for key, _ in _counted(group)})
    self.keys, self.rank = keys, {key: i for i, key in enumerate(keys)}
    self.counts: dict[int, int] = {}
    self.largest: list[int] = []  # negated kept ranks: a max-heap
    self.best: int | None = None

  def add(self, groups: list) -> None:
    touched = []
    for group in groups:
      for key, n in _counted(group):
        rank = self.rank[key]
        if rank in self.counts:
          self.counts[rank] += n
        elif len(self.counts) < MAX_DISTINCT:
          self.counts[rank] = n
          heapq.heappush(self.largest, -rank)
        elif rank < -self.largest[0]:
          evicted = -heapq.heapreplace(self.largest, -rank)
          del self.counts[evicted]
          self.counts[rank] = n
          if evicted == self.best:
            self.best = None
        else:
          continue
        touched.append(rank)
    if self.best is None:
      if self.counts:
        self.best = min(self.counts, key=lambda r: (-self.counts[r], r))
      return
    for rank in touched:
      if rank in self.counts and (-self.counts[rank], rank) < (-self.counts[self.best], self.best):
        self.best = rank

  def value(self) -> Any:
    return None if self.best is None else self.keys[self.best][1]


# --- windowed buckets -----------------------------------------------------------------------

def _window(within_days: Any) -> int:
  if (isinstance(within_days, bool) or not isinstance(within_days, (int, float))
      or not math.isfinite(within_days) or within_days <= 0):
    raise ValueError(f'within_days must be a positive number, not {within_days!r}')
  return max(1, round(within_days * DAY))


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f'unknown trait kind {kind!r}: one of {", ".join(KINDS)}')


def _check_window(state: dict, within_days: float | None) -> None:
  if 'days' not in state:
    if within_days is not None:
      raise ValueError('an unwindowed trait state read with a window')
  elif within_days is None or _window(within_days) != state['window']:
    raise ValueError(f'a trait state of a {state["window"] / DAY:g}-day window read with '
                     f'within_days={within_days!r}')


def _cutoff(state: dict, reference: Any) -> int:
  if not isinstance(reference, int) or isinstance(reference, bool):
    raise ValueError(f'a windowed trait needs a reference time (int), not {reference!r}')
  return reference - state['window']


def _live_from(state: dict) -> int:
  """The oldest day a reference from `newest - PRUNE_SLACK` on can still see: every earlier day
  ended at or before newest - window - PRUNE_SLACK."""
  if state['newest'] is None:
    return -(2 ** 80)
  return (state['newest'] - state['window'] - PRUNE_SLACK + 1) // DAY


def _prune(state: dict) -> None:
  live_from = _live_from(state)
  for day in [day for day in state['days'] if day < live_from]:
    del state['days'][day]


def _bucket_add(kind: str, bucket: dict, t: int, message_id: str, item: Any) -> None:
  """Keeps the day's newest MAX_EXACT_PER_DAY events by (event_time, message_id) exactly, the
  older ones in the day's aggregate with the time of the newest of them."""
  entries = bucket['entries']
  at = bisect.bisect_left(entries, (t, message_id))
  if at < len(entries) and entries[at][:2] == (t, message_id):
    if _order_item(kind, item) < _order_item(kind, entries[at][2]):
      entries[at] = (t, message_id, item)
    return
  if len(entries) >= MAX_EXACT_PER_DAY:
    if at == 0:
      _rest_add(kind, bucket, t, message_id, item)
      return
    oldest = entries.pop(0)
    at -= 1
    _rest_add(kind, bucket, *oldest)
  entries.insert(at, (t, message_id, item))


def _order_item(kind: str, item: Any) -> Any:
  if kind == 'count':
    return 0
  if kind in ('sum', 'avg'):
    return (item, item.as_tuple().exponent)  # 1.0 and 1.00 are one number but two Decimals
  return _order(item)


def _rest_add(kind: str, bucket: dict, t: int, message_id: str, item: Any) -> None:
  rest = _empty(kind) if bucket['rest'] is None else bucket['rest']
  bucket['rest'] = _agg_add(kind, rest, t, message_id, item)
  bucket['rest_at'] = _max(bucket['rest_at'], t)


def _items_after(state: dict, cutoff: int):
  """The state's exact events and day aggregates with a time after `cutoff`, as
  (time, 'entry', (t, message_id, item)) and (time, 'rest', aggregate)."""
  for day, bucket in state['days'].items():
    if (day + 1) * DAY - 1 <= cutoff:
      continue
    if bucket['rest_at'] is not None and bucket['rest_at'] > cutoff:
      yield (bucket['rest_at'], 'rest', bucket['rest'])
    for entry in bucket['entries']:
      if entry[0] > cutoff:
        yield (entry[0], 'entry', entry)


def _agg_group(kind: str, agg: Any, group: tuple) -> Any:
  if group[1] == 'entry':
    return _agg_add(kind, agg, *group[2])
  return _agg_merge(kind, agg, group[2])


def _max(a: int | None, b: int | None) -> int | None:
  if a is None or b is None:
    return a if b is None else b
  return max(a, b)
