"""The batch pipeline end to end against the real emulators: files -> BigQuery + Firestore."""
import collections
import datetime
import json

import pytest
from google.cloud import firestore

from pipeline import run
from scripts import generate_data, show
from transforms.sinks import bigquery_client

PROJECT = 'demo-local'


@pytest.fixture(scope='module')
def sample(tmp_path_factory):
  out = tmp_path_factory.mktemp('sample')
  manifest = generate_data.generate(out, customers=150, products=60, events=3000, seed=7, files=2)
  return out, manifest


def test_batch_run_writes_events_dead_letters_and_documents(local_stack, unique_name, sample,
                                                            capsys):
  data, manifest = sample
  code = run.main([
      f'--events={data}/events-*.ndjson.gz', f'--customers={data}/customers.csv',
      f'--catalog={data}/catalog.csv', f'--project={PROJECT}', '--runner=FnApiRunner',
      f'--dataset={unique_name}', f'--collection={unique_name}'])
  printed = capsys.readouterr().out
  assert code == 0, printed
  bad = manifest['malformed'] + manifest['invalid']
  assert (f"check: read {manifest['lines_total']:,} = written {manifest['valid_unique']:,} + "
          f"duplicates {manifest['duplicates']:,} + dead-lettered {bad:,}") in printed

  bq = bigquery_client.cloud_client(PROJECT)
  # Tables are DAY-partitioned and clustered as schemas/ says.
  events_table = bq.get_table(f'{PROJECT}.{unique_name}.events')
  assert events_table.time_partitioning.type_ == 'DAY'
  assert events_table.time_partitioning.field == 'event_time'
  assert events_table.clustering_fields == ['user_id', 'event']
  dead_table = bq.get_table(f'{PROJECT}.{unique_name}.dead_letter')
  assert (dead_table.time_partitioning.type_, dead_table.time_partitioning.field) == (
      'DAY', 'failed_at')

  rows = [dict(r) for r in bq.query(
      f'SELECT * FROM `{PROJECT}.{unique_name}.events`').result()]
  assert len(rows) == manifest['valid_unique']
  assert len({r['message_id'] for r in rows}) == len(rows)
  names = collections.Counter(r['event'] if r['type'] == 'track' else r['type'] for r in rows)
  assert dict(names) == manifest['event_names']
  assert {r['source'] for r in rows} == {f'file:{p}' for p in sorted(data.glob('events-*'))}

  dead = [dict(r) for r in bq.query(
      f'SELECT failure_type, step, payload, payload_encoding '
      f'FROM `{PROJECT}.{unique_name}.dead_letter`').result()]
  assert len(dead) == bad
  assert (collections.Counter(d['failure_type'] for d in dead)
          == manifest['expected_failure_types'])
  assert {d['step'] for d in dead} == {'ParseEvents'}

  # Hourly activity: in batch one on-time pane per key, and the counts add up to the events.
  hourly = [dict(r) for r in bq.query(
      f'SELECT * FROM `{PROJECT}.{unique_name}.customer_activity_hourly`').result()]
  assert {(h['pane_index'], h['pane_timing']) for h in hourly} == {(0, 'ON_TIME')}
  assert sum(h['event_count'] for h in hourly) == len(rows)  # every event has some id
  keys = [(h['window_start'], h['customer_id'], h['event_name'], h['currency']) for h in hourly]
  assert len(keys) == len(set(keys))
  orders = [r for r in rows if r['event'] == 'Order Completed']
  assert sum(h['revenue'] or 0 for h in hourly) == sum(
      (r['total'] if r['total'] is not None else r['revenue'] or 0) for r in orders)
  assert all(h['window_start'].minute == 0 and h['window_end'] - h['window_start']
             == datetime.timedelta(hours=1) for h in hourly)

  # No raw email anywhere in the warehouse.
  for row in rows + dead + hourly:
    assert '@' not in json.dumps(row, default=str), row

  # One document per identified customer; each agrees with an aggregate computed in SQL-free
  # Python straight from the warehouse rows (not from the pipeline's fold).
  docs = {d.id: d.to_dict() for d in
          firestore.Client(project=PROJECT).collection(unique_name).stream()}
  assert len(docs) == manifest['user_ids']
  expected = collections.defaultdict(lambda: {'counts': collections.Counter(), 'last': None})
  for r in rows:
    if r['user_id']:
      e = expected[r['user_id']]
      e['counts'][r['event'] if r['type'] == 'track' else r['type']] += 1
      e['last'] = r['event_time'] if e['last'] is None else max(e['last'], r['event_time'])
  assert set(docs) == set(expected)
  for customer_id, doc in docs.items():
    assert doc['customer_id'] == customer_id
    assert doc['schema_version'] == 1
    assert doc['event_counts'] == dict(expected[customer_id]['counts'])
    assert doc['last_event_at'] == expected[customer_id]['last']
    assert doc['updated_at'] is not None

  # What `make demo` prints after the run: a query over the events table and one document.
  assert show.main([f'--project={PROJECT}', f'--dataset={unique_name}',
                    f'--collection={unique_name}']) == 0
  shown = capsys.readouterr().out
  assert 'partitioned DAY on event_time, clustered by user_id, event' in shown
  assert 'Product Viewed' in shown and f'Firestore document {unique_name}/' in shown


def test_rerun_into_existing_tables_keeps_them(local_stack, unique_name, sample):
  data, _ = sample
  args = [f'--events={data}/events-00000-*.ndjson.gz', f'--project={PROJECT}',
          '--runner=FnApiRunner', f'--dataset={unique_name}', f'--collection={unique_name}']
  assert run.main(args) == 0
  assert run.main(args) == 0  # tables exist now: created once, appended to
  bq = bigquery_client.cloud_client(PROJECT)
  assert bq.get_table(f'{PROJECT}.{unique_name}.events').clustering_fields == ['user_id', 'event']


def test_file_loads_write_method_with_a_local_temp_location(local_stack, unique_name, sample,
                                                            tmp_path):
  data, manifest = sample
  code = run.main([
      f'--events={data}/events-*.ndjson.gz', f'--project={PROJECT}', '--runner=FnApiRunner',
      f'--dataset={unique_name}', f'--collection={unique_name}',
      '--bigquery_write_method=FILE_LOADS', f'--temp_location={tmp_path}'])
  assert code == 0
  bq = bigquery_client.cloud_client(PROJECT)
  count = list(bq.query(f'SELECT COUNT(DISTINCT message_id) AS n, COUNT(*) AS rows '
                        f'FROM `{PROJECT}.{unique_name}.events`').result())[0]
  assert (count['n'], count['rows']) == (manifest['valid_unique'], manifest['valid_unique'])
  dead = list(bq.query(f'SELECT COUNT(*) AS n FROM `{PROJECT}.{unique_name}.dead_letter`')
              .result())[0]['n']
  assert dead == manifest['malformed'] + manifest['invalid']
  # The load job appended to the pre-created table: partitioning and clustering are kept.
  table = bq.get_table(f'{PROJECT}.{unique_name}.events')
  assert table.time_partitioning.field == 'event_time'
  assert table.clustering_fields == ['user_id', 'event']
