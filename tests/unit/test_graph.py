"""The assembled graph (without cloud sinks) on generated data: everything read is accounted for;
the graph's shape: one fork, stable step labels, small constructors."""
import importlib
import inspect
import pkgutil

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import userstate

from pipeline import graph, tally
from pipeline.options import PersonalizationOptions
from pipeline.summary import RunSummary
from scripts import generate_data
from tests.unit.beam_helpers import batch_pipeline
from transforms.sinks.bigquery import WriteTable


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


def _step_names(p) -> set[str]:
  return {t.unique_name for t in p.to_runner_api().components.transforms.values()}


class _TableWriters(beam.pipeline.PipelineVisitor):
  """table -> the full label of the WriteTable that writes it."""

  def __init__(self):
    self.labels = {}

  def enter_composite_transform(self, node):
    if isinstance(node.transform, WriteTable):
      self.labels[node.transform._table] = node.full_label


def test_the_graph_forks_once_under_the_same_step_labels(sample):
  # Construction only (nothing runs): each mode applies its own composites under the labels
  # Dataflow matches on update; batch writes no popularity collection (it has none).
  data, _ = sample
  shared = {'ReadEvents', 'ParseEvents', 'DedupeEvents', 'HourlyActivity', 'BuildProfiles',
            'WriteEvents', 'WriteHourlyActivity', 'WriteDocuments', 'WriteProfiles',
            'WriteTriggers', 'WriteDeadLetters'}
  p = batch_pipeline()
  opts = p.options.view_as(PersonalizationOptions)
  opts.events = f'{data}/events-*.ndjson.gz'
  assert graph.build(p, opts, 'demo-local').popularity is None
  names = _step_names(p)
  assert shared | {'DedupeEvents/KeepFirst', 'HourlyActivity/ToHourRows',
                   'BuildProfiles/FoldAndRender'} <= names
  assert not {n for n in names if 'Popularity' in n and not n.startswith('BuildProfiles/')}
  assert not {n for n in names if 'LivePopularity' in n or 'AssignEventTime' in n}

  options = PipelineOptions(['--streaming', '--subscription=projects/demo-local/subscriptions/e',
                             f'--events={data}/events-*.ndjson.gz',
                             '--runner=BundleBasedDirectRunner', '--project=demo-local'])
  p = beam.Pipeline(options=options)
  assert graph.build(p, options.view_as(PersonalizationOptions), 'demo-local').popularity
  names = _step_names(p)
  assert shared | {'ReadPubSub', 'MergeSources', 'AssignEventTime', 'DedupeEvents/FirstSeen',
                   'HourlyActivity/HourlyWindows', 'BuildProfiles/StitchLive',
                   'BuildProfiles/FoldLive', 'BuildProfiles/LivePopularity',
                   'WritePopularity'} <= names
  # A refused events row is dead-lettered under its writer's label, which pipeline/tally.py
  # counts as an event's dead letter.
  writers = _TableWriters()
  p.visit(writers)
  assert writers.labels['events'] == tally.EVENTS_WRITE_STEP


def test_no_composite_takes_a_streaming_flag_or_more_than_five_parameters():
  import transforms
  composites = []
  for info in pkgutil.walk_packages(transforms.__path__, 'transforms.'):
    module = importlib.import_module(info.name)
    composites += [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                   if issubclass(cls, beam.PTransform) and cls.__module__ == module.__name__]
  assert len(composites) > 15
  for cls in composites:
    parameters = list(inspect.signature(cls.__init__).parameters)[1:]
    assert 'streaming' not in parameters, cls
    assert len(parameters) <= 5, (cls, parameters)


class _TimerNames(beam.pipeline.PipelineVisitor):

  def __init__(self):
    self.names = []

  def visit_transform(self, applied):
    if isinstance(applied.transform, beam.ParDo):
      self.names += [spec.name for spec in userstate.get_dofn_specs(applied.transform.fn)[1]]


def test_timer_names_are_distinct_across_the_streaming_graph(sample):
  # The FnApiRunner routes the timers of a fused stage by timer name alone (apache/beam#21995):
  # two stateful DoFns naming a timer alike would lose one's timers to the other (measured:
  # documents for 39 of 70 customers, popularity keyed by customer ids).
  data, _ = sample
  options = PipelineOptions(['--streaming', '--subscription=projects/demo-local/subscriptions/e',
                             f'--events={data}/events-*.ndjson.gz',
                             '--runner=BundleBasedDirectRunner', '--project=demo-local'])
  p = beam.Pipeline(options=options)
  graph.build(p, options.view_as(PersonalizationOptions), 'demo-local')
  visitor = _TimerNames()
  p.visit(visitor)
  assert len(visitor.names) >= 5
  assert len(set(visitor.names)) == len(visitor.names), sorted(visitor.names)
