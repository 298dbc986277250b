"""The assembled graph (without cloud sinks) on generated data: everything read is accounted for."""
import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipeline import graph
from pipeline.options import PersonalizationOptions
from pipeline.summary import RunSummary
from scripts import generate_data
from tests.unit.beam_helpers import batch_pipeline


@pytest.fixture(scope='module')
def sample(tmp_path_factory):
  out = tmp_path_factory.mktemp('graph-sample')
  return out, generate_data.generate(out, customers=80, products=40, events=1500, seed=11, files=2)


def test_graph_accounts_for_every_line(sample):
  data, manifest = sample
  p = batch_pipeline()
  opts = p.options.view_as(PersonalizationOptions)
  opts.events = f'{data}/events-*.ndjson.gz'
  opts.customers = f'{data}/customers.csv'
  opts.catalog = f'{data}/catalog.csv'
  out = graph.build_outputs(p, opts)

  def count(pcoll, label):
    return pcoll | f'Count{label}' >> beam.combiners.Count.Globally()

  assert_that(count(out.events, 'Events'), equal_to([manifest['valid_unique']]), label='Events')
  assert_that(out.events | beam.Map(lambda e: e['message_id']) | beam.Distinct()
              | 'CountIds' >> beam.combiners.Count.Globally(),
              equal_to([manifest['valid_unique']]), label='UniqueIds')
  assert_that(out.dead_letters | beam.Map(lambda d: d['failure_type'])
              | beam.combiners.Count.PerElement(),
              equal_to(list(manifest['expected_failure_types'].items())), label='DeadLetters')
  assert_that(count(out.documents, 'Documents'), equal_to([manifest['user_ids']]),
              label='Documents')
  assert_that(count(out.customers, 'Customers'), equal_to([manifest['customers']]),
              label='Customers')
  assert_that(count(out.catalog, 'Catalog'), equal_to([manifest['products']]), label='Catalog')
  names = out.events | beam.Map(
      lambda e: e['event'] if e['type'] == 'track' else e['type']) \
      | 'CountNames' >> beam.combiners.Count.PerElement()
  assert_that(names, equal_to(list(manifest['event_names'].items())), label='EventNames')
  result = p.run()
  result.wait_until_finish()

  summary = RunSummary.from_result(result)
  assert summary.get('events_read') == manifest['lines_total']
  assert summary.get('events_duplicate') == manifest['duplicates']
  assert summary.get('events_dead_lettered') == manifest['malformed'] + manifest['invalid']
  # No sinks in this graph, so only the sink check may fail.
  assert [p for p in summary.problems() if 'rows sent' not in p] == []


def test_graph_requires_event_patterns():
  p = batch_pipeline()
  with pytest.raises(ValueError, match='--events is required'):
    graph.build_outputs(p, p.options.view_as(PersonalizationOptions))
