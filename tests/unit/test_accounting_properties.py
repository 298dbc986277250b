"""Accounting for any input: the graph (batch, FnApiRunner) on arbitrary mixes of valid events,
duplicates (same `messageId`, same or different payload), schema violations, malformed and blank
lines, in arbitrary order. Whatever the mix: read = unique + duplicates + dead-lettered, the
counters equal what the graph emitted, and every valid message id is emitted exactly once."""
import gzip
import json
import tempfile

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import graph
from pipeline.options import PersonalizationOptions
from pipeline.summary import RunSummary
from tests.unit.beam_helpers import batch_pipeline


def _valid(i, user):
  return {'type': 'track', 'event': 'Product Viewed', 'messageId': f'm{i}', 'userId': user,
          'timestamp': f'2026-11-{1 + i % 28:02d}T10:{i % 60:02d}:00Z',
          'properties': {'product_id': f'p{i % 5}', 'price': 3.5}}


_BAD = [
    b'{"type": "track", "messageId": "x"',                                # truncated
    b'not json at all',
    b'{"type": "track", "event": "Product Viewed", "userId": "u1"}',     # no messageId
    b'{"type": "launch", "messageId": "bad-type", "userId": "u1"}',       # unknown type
    b'[1, 2, 3]',
    b'{"type": "track", "event": "Product Added", "messageId": "q", "userId": "u",'
    b' "timestamp": "2026-11-01T00:00:00Z", "properties": {"quantity": -3}}',
]

_LINE = st.one_of(
    st.tuples(st.just('valid'), st.integers(0, 30), st.sampled_from(['u1', 'u2', 'u3'])),
    st.tuples(st.just('bad'), st.sampled_from(range(len(_BAD))), st.just('')),
    st.tuples(st.just('blank'), st.just(0), st.just('')),
)


def _render(spec):
  kind, i, user = spec
  if kind == 'valid':
    return json.dumps(_valid(i, user)).encode()
  if kind == 'bad':
    return _BAD[i]
  return b'   '


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(_LINE, min_size=1, max_size=60))
def test_counts_add_up_for_any_mix(specs):
  lines = [_render(s) for s in specs]
  valid_ids = {f'm{i}' for kind, i, _ in specs if kind == 'valid'}
  with tempfile.TemporaryDirectory() as tmp:
    path = f'{tmp}/events.ndjson.gz'
    with gzip.open(path, 'wb') as out:
      out.write(b'\n'.join(lines) + b'\n')
    p = batch_pipeline()
    opts = p.options.view_as(PersonalizationOptions)
    opts.events = path
    out = graph.build_outputs(p, opts)
    assert_that(out.events | beam.Map(lambda e: e['message_id']), equal_to(sorted(valid_ids)),
                label='EachValidIdOnce')
    bad = sum(1 for kind, _, _ in specs if kind == 'bad')
    assert_that(out.dead_letters | beam.combiners.Count.Globally(), equal_to([bad]),
                label='EveryBadLineDeadLettered')
    result = p.run()
    result.wait_until_finish()
  summary = RunSummary.from_result(result)
  read = summary.get('events_read')
  blank = summary.get('blank_lines_skipped')
  assert read + blank == len(lines)
  assert read == (summary.get('events_unique') + summary.get('events_duplicate')
                  + summary.get('events_dead_lettered'))
  assert summary.get('events_unique') == len(valid_ids)
  assert summary.get('events_dead_lettered') == bad
  assert [problem for problem in summary.problems() if 'rows sent' not in problem] == []
