"""Idempotent batch loads, the pure parts: each table's natural key, the MERGE and hourly rebuild
statements, the staging settings, where the batch graph writes, and the run summary's merge lines.
The statements run against the BigQuery emulator in tests/integration/test_batch_pipeline.py."""
import datetime
import re

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

import schemas
from pipeline import graph
from pipeline.options import PersonalizationOptions
from pipeline.summary import RunSummary
from tests.unit.beam_helpers import batch_pipeline
from transforms.rules import loads
from transforms.settings import BigQueryTarget, StagedLoad
from transforms.sinks.bigquery import WriteTable
from transforms.sinks.bigquery_merge import MergeResult

TARGET = BigQueryTarget('demo-local', 'personalization')
RUN_ID = '20261201t120000_ab12cd34'


def _columns(table):
  return [f['name'] for f in schemas.bigquery_fields(table)]


def test_every_table_but_profiles_is_merged_events_before_the_hourly_rebuild():
  assert set(loads.MERGE_ORDER) == set(schemas.TABLES) - {'customer_profiles'}
  assert loads.MERGE_ORDER.index('events') < loads.MERGE_ORDER.index(loads.HOURLY)
  assert set(loads.MERGE_KEYS) == set(loads.MERGE_ORDER) - {loads.HOURLY}
  assert loads.UNIQUE_IN_RUN <= set(loads.MERGE_KEYS) and 'dead_letter' not in loads.UNIQUE_IN_RUN


@pytest.mark.parametrize('table', sorted(loads.MERGE_KEYS))
def test_each_key_column_is_a_required_column_of_its_table(table):
  # A NULL key never equals anything in SQL: a nullable key column would re-insert its rows on
  # every run.
  modes = {f['name']: f['mode'] for f in schemas.bigquery_fields(table)}
  for column in loads.MERGE_KEYS[table]:
    assert modes.get(column) == 'REQUIRED', (table, column)


@pytest.mark.parametrize('table', sorted(loads.MERGE_KEYS))
def test_the_merge_inserts_every_column_where_the_key_is_missing(table):
  target, staging = f'p-1.ds.{table}', f'p-1.ds.{table}__staging_{RUN_ID}'
  sql = loads.merge_sql(target, staging, table, _columns(table))
  assert sql.startswith(f'MERGE `{target}` t USING (')
  on = re.search(r' ON (.*) WHEN NOT MATCHED THEN INSERT ', sql).group(1)
  assert on.split(' AND ') == [f't.{c} = s.{c}' for c in loads.MERGE_KEYS[table]]
  inserted = re.search(r'INSERT \((.*?)\) VALUES \((.*)\)$', sql)
  assert inserted.group(1).split(', ') == _columns(table)
  assert inserted.group(2).split(', ') == [f's.{c}' for c in _columns(table)]
  assert 'WHEN MATCHED' not in sql and 'INSERT ROW' not in sql  # never updates, never deletes
  # Deduplicated inside the staging table only where the key is unique within a run.
  source = loads.merge_source_sql(staging, table)
  assert f'FROM `{staging}`' in source
  assert ('PARTITION BY ' + ', '.join(loads.MERGE_KEYS[table]) in source) == (
      table in loads.UNIQUE_IN_RUN)
  assert loads.count_sql(source) == f'SELECT COUNT(*) AS n FROM ({source})'


def test_the_hourly_rebuild_writes_every_column_of_the_hourly_table():
  assert list(loads.HOURLY_COLUMNS) == _columns(loads.HOURLY)
  sql = loads.hourly_rebuild_sql('p.ds.h', 'p.ds.h__staging_x', 'p.ds.events')
  assert sql.startswith(f'INSERT INTO `p.ds.h` ({", ".join(loads.HOURLY_COLUMNS)})\nWITH ')
  # Only the run's hours are read, of events and of the hourly table.
  assert sql.count('>= @lo AND') == 2 and sql.count('< @hi') == 2
  assert 'FROM `p.ds.h__staging_x`' in sql and 'FROM `p.ds.events`' in sql
  count = loads.hourly_rebuilt_count_sql('p.ds.h', 'p.ds.h__staging_x', 'p.ds.events')
  assert count.endswith('SELECT COUNT(*) AS n FROM rebuilt') and 'INSERT' not in count


def test_run_ids_and_table_paths_are_checked():
  run_id = loads.new_run_id(datetime.datetime(2026, 12, 1, 13, 0, tzinfo=datetime.timezone(
      datetime.timedelta(hours=1))), 'AB12CD34')
  assert run_id == RUN_ID  # UTC, lower case
  assert loads.staging_table_id('events', run_id) == f'events__staging_{RUN_ID}'
  for bad in ('', 'UPPER', 'a-b', 'a' * 65, 'x;DROP'):
    with pytest.raises(ValueError, match='load run id'):
      loads.staging_table_id('events', bad)
  with pytest.raises(ValueError, match='not a BigQuery table path'):
    loads.quoted('p.ds.t` WHERE 1=1 --')


def test_staged_load_names_staging_tables_and_refuses_unknown_tables():
  load = StagedLoad(TARGET, RUN_ID, ('events', 'dead_letter'))
  assert load.path('events') == f'demo-local.personalization.events__staging_{RUN_ID}'
  assert load.path('events', staged=False) == 'demo-local.personalization.events'
  with pytest.raises(ValueError, match="'customer_profiles'"):
    StagedLoad(TARGET, RUN_ID, ('events', 'customer_profiles'))
  with pytest.raises(ValueError, match='load run id'):
    StagedLoad(TARGET, 'Bad Id', ('events',))


class _Writes(beam.pipeline.PipelineVisitor):

  def __init__(self):
    self.destinations, self.labels = {}, set()

  def visit_transform(self, applied):
    self.labels.add(applied.full_label)
    if isinstance(applied.transform, WriteTable):
      self.destinations[applied.full_label] = applied.transform._destination

  enter_composite_transform = visit_transform


def _constructed(p, opts, staging=None):
  graph.build(p, opts, 'demo-local', staging)
  visitor = _Writes()
  p.visit(visitor)
  return visitor


def test_batch_writes_to_staging_tables_and_merges_last(tmp_path):
  events = tmp_path / 'e.ndjson'
  events.write_text('{}\n')
  p = batch_pipeline()
  opts = p.options.view_as(PersonalizationOptions)
  opts.events = str(events)
  staging = graph.staged_load(opts, 'demo-local')
  assert staging.tables == ('events', 'customer_activity_hourly', 'cart_triggers', 'dead_letter')
  writes = _constructed(p, opts, staging)
  assert writes.destinations == {
      'WriteEvents': staging.table_id('events'),
      'WriteHourlyActivity': staging.table_id('customer_activity_hourly'),
      'WriteTriggers': staging.table_id('cart_triggers'),
      'WriteDeadLetters': staging.table_id('dead_letter'),
      'WriteProfiles': 'customer_profiles'}  # rows of Firestore writes already made
  assert 'MergeStaged' in writes.labels and 'MergeStaged/Merge' in writes.labels


def test_streaming_appends_and_takes_no_staging_tables():
  options = PipelineOptions(['--streaming', '--subscription=projects/demo-local/subscriptions/e',
                             '--runner=BundleBasedDirectRunner', '--project=demo-local'])
  opts = options.view_as(PersonalizationOptions)
  writes = _constructed(beam.Pipeline(options=options), opts)
  assert writes.destinations['WriteEvents'] == 'events'
  assert set(writes.destinations.values()) <= set(schemas.TABLES)
  assert not {label for label in writes.labels if label.startswith('MergeStaged')}
  with pytest.raises(ValueError, match='staging tables are for batch'):
    graph.build(beam.Pipeline(options=options), opts, 'demo-local',
                StagedLoad(TARGET, RUN_ID, ('events',)))


def _summary(**counters):
  base = {'events_read': 10, 'events_valid': 10, 'events_unique': 10,
          'rows_sent_events': 10, 'rows_sent_customer_activity_hourly': 4}
  return RunSummary({**base, **counters})


def test_the_summary_shows_what_each_merge_added_and_checks_it_against_what_was_sent():
  rerun = _summary(rows_added_events=0, rows_present_events=10,
                   rows_added_customer_activity_hourly=0,
                   rows_present_customer_activity_hourly=7)
  assert rerun.problems() == []
  text = rerun.render()
  assert re.search(r'BigQuery rows added to events +0  \(already present 10; merged on its '
                   r'key\)', text)
  # The hourly rows are rebuilt from events: their number is not the number sent.
  assert re.search(r'rows added to customer_activity_hourly +0  \(already present 7; rebuilt '
                   r'from events\)', text)
  short = _summary(rows_added_events=3, rows_present_events=5)
  assert short.problems() == ['merge into events: added 3 + already present 5 != rows staged 10']
  # Rows BigQuery rejected from the staging table never reached the merge.
  assert _summary(rows_added_events=8, rows_present_events=0,
                  rows_rejected_events=2).problems() == []
  assert MergeResult('events', 10, 3).present == 7


def test_an_order_keys_its_hourly_row_on_its_currency_only_when_it_has_a_value():
  # A row shows its currency only with a revenue: an order without a value shares the row
  # without currency, so no two rows of an hour, customer and name show the same merge key.
  from decimal import Decimal

  from transforms.rules import activity
  order = {'type': 'track', 'event': 'Order Completed', 'user_id': 'c1', 'currency': 'EUR'}
  assert activity.activity_key({**order, 'total': Decimal('9.5')}) == (
      'c1', True, 'Order Completed', 'EUR')
  assert activity.activity_key({**order, 'revenue': Decimal('0')})[3] == 'EUR'
  assert activity.activity_key(order) == ('c1', True, 'Order Completed', None)
  assert activity.activity_key({'type': 'track', 'event': 'Product Viewed', 'user_id': 'c1',
                                'currency': 'EUR', 'price': Decimal(1)})[3] is None
