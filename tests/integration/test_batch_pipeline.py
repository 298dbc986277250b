"""The batch pipeline end to end against the real emulators: files -> BigQuery + Firestore."""
import collections
import csv
import datetime
import json
import pathlib
import re

import pytest
from google.cloud import firestore, pubsub_v1

import schemas
from pipeline import run
from scripts import generate_data, publish, show
from transforms.rules import activity
from transforms.sinks import bigquery as bigquery_sink
from transforms.sinks import bigquery_client

PROJECT = 'demo-local'
AUDIENCES = pathlib.Path(__file__).parents[2] / 'audiences.example.yaml'


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

  # Documents: checked field by field against values computed here, independently of the
  # pipeline's rules, from the warehouse rows and the CRM file.
  docs = {d.id: d.to_dict() for d in
          firestore.Client(project=PROJECT).collection(unique_name).stream()}
  expected = _expected_documents(rows, data / 'customers.csv')
  assert set(docs) == set(expected)
  assert 0 < len(docs) < manifest['user_ids']  # some customers opted out or unsubscribed
  # The sample exercises every rule checked below (or the checks would prove little).
  assert any(w['cart'] for w in expected.values()) and any(w['orders'] for w in expected.values())
  assert any(w['engagement']['last_email_click_at'] for w in expected.values())
  assert any(d['cart']['abandoned'] for d in docs.values())
  assert any(d['recommendations'] for d in docs.values())
  for customer_id, doc in docs.items():
    want = expected[customer_id]
    assert doc['customer_id'] == customer_id
    assert doc['schema_version'] == 1
    assert doc['updated_at'] is not None
    assert doc['last_event_at'] == want['last_event_at'], customer_id
    assert [v['product_id'] for v in doc['recently_viewed']] == want['recently_viewed'], customer_id
    assert {i['product_id']: i['quantity'] for i in doc['cart']['items']} == want['cart']
    assert doc['orders']['count'] == want['orders'], customer_id
    assert doc['first_name'] == want['first_name'], customer_id
    assert doc['engagement'] == want['engagement'], customer_id
    assert doc['segment'] in ('vip', 'at_risk', 'active', 'prospect')
    assert (doc['segment'] == 'prospect') == (want['orders'] == 0)
  # Each written document has its snapshot row.
  profiles = [dict(r) for r in bq.query(
      f'SELECT customer_id, segment FROM `{PROJECT}.{unique_name}.customer_profiles`').result()]
  assert sorted(p['customer_id'] for p in profiles) == sorted(docs)
  assert {p['customer_id']: p['segment'] for p in profiles} == {
      cid: d['segment'] for cid, d in docs.items()}
  # One trigger per abandoned cart among the documents.
  triggers = [dict(r) for r in bq.query(
      f'SELECT customer_id, trigger_id FROM `{PROJECT}.{unique_name}.cart_triggers`').result()]
  assert sorted(t['customer_id'] for t in triggers) == sorted(
      cid for cid, d in docs.items() if d['cart']['abandoned'])
  assert len({t['trigger_id'] for t in triggers}) == len(triggers)
  for row in profiles + triggers:
    assert '@' not in json.dumps(row, default=str)

  # What `make demo` prints after the run: a query over the events table and one document.
  assert show.main([f'--project={PROJECT}', f'--dataset={unique_name}',
                    f'--collection={unique_name}']) == 0
  shown = capsys.readouterr().out
  assert 'partitioned DAY on event_time, clustered by user_id, event' in shown
  assert 'Product Viewed' in shown and f'Firestore document {unique_name}/' in shown


def _table_rows(bq, dataset):
  """Every table of the dataset -> its rows, in a canonical order (JSON text of each row)."""
  tables = {}
  for table in bq.list_tables(f'{PROJECT}.{dataset}'):
    rows = [dict(r) for r in bq.query(f'SELECT * FROM `{PROJECT}.{dataset}.{table.table_id}`')
            .result()]
    tables[table.table_id] = sorted(rows, key=lambda r: json.dumps(r, default=str, sort_keys=True))
  return tables


def _documents(collection):
  return {d.id: d.to_dict() for d in firestore.Client(project=PROJECT).collection(collection)
          .stream()}


def _current_hourly_panes(hourly):
  """(hour, customer, identified, name, currency) -> the row with the highest pane_index."""
  current = {}
  for h in hourly:
    key = (h['window_start'], h['customer_id'], h['identified'], h['event_name'], h['currency'])
    if key not in current or h['pane_index'] > current[key]['pane_index']:
      current[key] = h
  return current


def _hourly_from_events(rows):
  """What the hourly table's current panes must say: the Python rules HourlyBatch applies
  (transforms/rules/activity.py) over every row of `events`."""
  totals = {}
  for r in rows:
    key = activity.activity_key(r)
    if key is None:
      continue
    customer, identified, name, currency = key
    hour = r['event_time'].replace(minute=0, second=0, microsecond=0)
    slot = (hour, customer, identified, name, currency)
    totals[slot] = activity.add(totals.get(slot, (0, None)), (1, activity.revenue(r)))
  return {(hour, customer, identified, name, currency if revenue is not None else None):
          (count, revenue) for (hour, customer, identified, name, currency), (count, revenue)
          in totals.items()}


# Calls the sample has none of, for the hourly rebuild's rules (transforms/rules/loads.py) to
# meet each branch of the Python rules they must equal: screen, group, alias, anonymous, and
# orders with a value in two currencies, with `revenue` only and without any value.
_EDGE = [
    {'type': 'screen', 'name': 'Home', 'userId': 'edge-1', 'anonymousId': 'edge-anon'},
    {'type': 'group', 'groupId': 'g-1', 'userId': 'edge-1'},
    {'type': 'alias', 'previousId': 'edge-anon', 'userId': 'edge-1'},
    {'type': 'page', 'name': 'Home', 'anonymousId': 'edge-anon-2'},
    {'type': 'track', 'event': 'Order Completed', 'userId': 'edge-1',
     'properties': {'order_id': 'o-1', 'currency': 'EUR'}},
    {'type': 'track', 'event': 'Order Completed', 'userId': 'edge-1',
     'properties': {'order_id': 'o-2', 'revenue': 12.5, 'currency': 'EUR'}},
    {'type': 'track', 'event': 'Order Completed', 'userId': 'edge-1',
     'properties': {'order_id': 'o-3', 'total': 10, 'currency': 'USD'}},
    {'type': 'track', 'event': 'Order Completed', 'userId': 'edge-1',
     'properties': {'order_id': 'o-4', 'total': 2.25}},
]


@pytest.fixture(scope='module')
def small_sample(tmp_path_factory):
  out = tmp_path_factory.mktemp('small-sample')
  manifest = generate_data.generate(out, customers=60, products=30, events=800, seed=7, files=2)
  return out, manifest


def test_a_rerun_changes_nothing_and_a_backfill_adds_only_new_events(local_stack, unique_name,
                                                                     small_sample, capsys,
                                                                     tmp_path):
  # Idempotent batch loads (docs/OPERATIONS.md, "Re-running the batch job"): every table the
  # batch job writes, and the documents, exactly as after the first run; then a backfill over
  # both files, overlapping the first, adds only what the tables do not hold. Three runs: a
  # smaller sample than the other tests'.
  data, manifest = small_sample
  edge = tmp_path / 'edge.ndjson'
  edge.write_text(''.join(json.dumps({**e, 'messageId': f'edge-{i}',
                                      'timestamp': f'2026-11-03T10:{i:02d}:00Z'}) + '\n'
                          for i, e in enumerate(_EDGE)))
  args = [f'--customers={data}/customers.csv', f'--catalog={data}/catalog.csv',
          f'--audiences={AUDIENCES}', f'--project={PROJECT}', '--runner=FnApiRunner',
          f'--dataset={unique_name}', f'--collection={unique_name}']
  first_file = f'--events={data}/events-00000-*.ndjson.gz'
  assert run.main([first_file, *args]) == 0, capsys.readouterr().out
  capsys.readouterr()
  bq = bigquery_client.cloud_client(PROJECT)
  before, documents = _table_rows(bq, unique_name), _documents(unique_name)
  # Every table holds rows (or the comparison below would prove little); the staging tables
  # are gone.
  assert set(before) == set(schemas.TABLES)
  assert all(before[table] for table in schemas.TABLES), {t: len(r) for t, r in before.items()}
  assert documents
  assert {k: (h['event_count'], h['revenue']) for k, h in
          _current_hourly_panes(before['customer_activity_hourly']).items()} == \
      _hourly_from_events(before['events'])

  assert run.main([first_file, *args]) == 0
  printed = capsys.readouterr().out
  assert _table_rows(bq, unique_name) == before
  assert _documents(unique_name) == documents
  # The tables were created once, with their partitioning and clustering.
  assert bq.get_table(f'{PROJECT}.{unique_name}.events').clustering_fields == ['user_id', 'event']
  # The summary says what the merges found.
  # (Audience changes are diffed against the table before they are staged: none this time.)
  for table in ('events', 'dead_letter', 'cart_triggers', 'customer_activity_hourly',
                'audience_membership'):
    present = 0 if table == 'audience_membership' else len(before[table])
    assert re.search(rf'BigQuery rows added to {table} +0  \(already present {present:,};',
                     printed), printed
  assert 'BigQuery rows sent to customer_profiles' not in printed  # no document changed

  # A backfill over both files (and the edge cases): the first file's events are in the table
  # already.
  assert run.main([f'--events={data}/events-*.ndjson.gz,{edge}', *args]) == 0
  printed = capsys.readouterr().out
  after = _table_rows(bq, unique_name)
  assert set(after) == set(schemas.TABLES)
  events = {r['message_id']: r for r in after['events']}
  assert len(events) == len(after['events']) == manifest['valid_unique'] + len(_EDGE)
  # The rows already loaded are kept as they were (the same ingested_at: not loaded again).
  assert all(events[r['message_id']] == r for r in before['events'])
  added = manifest['valid_unique'] + len(_EDGE) - len(before['events'])
  assert added > 0
  assert re.search(rf'BigQuery rows added to events +{added:,}  \(already present '
                   rf'{len(before["events"]):,};', printed), printed
  dead = after['dead_letter']
  assert len(dead) == manifest['malformed'] + manifest['invalid']
  assert all(row in dead for row in before['dead_letter'])
  # Triggers and memberships: the earlier rows stay, each key once.
  for table, key in (('cart_triggers', ('trigger_id',)),
                     ('audience_membership', ('customer_id', 'audience', 'change',
                                              'changed_at'))):
    assert all(row in after[table] for row in before[table]), table
    assert len({tuple(r[k] for k in key) for r in after[table]}) == len(after[table]), table
  # Hourly: the earlier rows stay; each key's current pane holds the totals over every event
  # of the table, the hours the first run loaded having gained a late pane where they changed.
  hourly = after['customer_activity_hourly']
  assert all(row in hourly for row in before['customer_activity_hourly'])
  current = _current_hourly_panes(hourly)
  assert {k: (h['event_count'], h['revenue']) for k, h in current.items()} == \
      _hourly_from_events(after['events'])
  late = [h for h in hourly if h['pane_index'] > 0]
  assert late and all(h['pane_timing'] == 'LATE' for h in late)
  assert {h['pane_timing'] for h in hourly if h['pane_index'] == 0} == {'ON_TIME'}
  panes = collections.defaultdict(list)
  for h in hourly:
    panes[(h['window_start'], h['customer_id'], h['identified'], h['event_name'],
           h['currency'])].append(h['pane_index'])
  assert all(sorted(p) == list(range(len(p))) for p in panes.values())
  assert sum(h['event_count'] for h in current.values()) == len(events)
  assert {(k[3], k[4]) for k in current if k[1] == 'edge-1'} == {
      ('page', None), ('group', None), ('alias', None), ('Order Completed', None),
      ('Order Completed', 'EUR'), ('Order Completed', 'USD')}


def test_a_batch_run_into_a_missing_dataset_says_so_before_it_starts(local_stack, unique_name,
                                                                     sample, capsys):
  data, _ = sample
  args = [f'--events={data}/events-00000-*.ndjson.gz', f'--project={PROJECT}',
          '--runner=FnApiRunner', f'--dataset={unique_name}', '--skip_table_setup']
  assert run.main(args) == 2
  error = capsys.readouterr().err
  assert f'--dataset {unique_name}: the batch load needs the dataset and its tables' in error
  # The dataset without the table a staging table merges into: the same, before anything runs.
  bigquery_sink.ensure_tables(PROJECT, unique_name, records=('events',))
  assert run.main(args) == 2
  error = capsys.readouterr().err
  assert 'customer_activity_hourly' in error and 'run without --skip_table_setup' in error, error


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


def _expected_documents(rows, crm_path):
  """The documents' key fields, computed plainly from warehouse rows and the CRM export."""
  crm = {r['customer_id']: r for r in csv.DictReader(open(crm_path, newline=''))}
  links = {}
  for r in rows:
    if r['user_id'] and r['anonymous_id']:
      candidate = (r['event_time'], r['user_id'])
      links[r['anonymous_id']] = min(links.get(r['anonymous_id'], candidate), candidate)
  by_customer = collections.defaultdict(list)
  for r in rows:
    customer = r['user_id'] or (links[r['anonymous_id']][1] if r['anonymous_id'] in links
                                else None)
    if customer:
      by_customer[customer].append(r)
  expected = {}
  for customer, events in by_customer.items():
    events.sort(key=lambda r: (r['event_time'], r['message_id']))
    identifies = [r for r in events if r['type'] == 'identify' and r['traits']]
    unsubscribed = [r['traits']['unsubscribed'] for r in identifies
                    if isinstance(r['traits'].get('unsubscribed'), bool)]
    if crm.get(customer, {}).get('email_opt_in') == 'false' or (unsubscribed and unsubscribed[-1]):
      continue
    names = [r['traits']['first_name'] for r in identifies if r['traits'].get('first_name')]
    viewed = []
    for r in reversed(events):
      if r['event'] == 'Product Viewed' and r['product_id'] and r['product_id'] not in viewed:
        viewed.append(r['product_id'])
    cart = collections.Counter()
    orders, cancelled = set(), set()
    for r in events:
      if r['event'] == 'Product Added' and r['product_id']:
        cart[r['product_id']] += r['quantity']
      elif r['event'] == 'Product Removed' and r['product_id']:
        cart[r['product_id']] -= r['quantity']
        if cart[r['product_id']] <= 0:
          del cart[r['product_id']]
      elif r['event'] == 'Order Completed':
        cart.clear()
        orders.add(r['order_id'] or r['message_id'])
      elif r['event'] == 'Order Cancelled':
        cancelled.add(r['order_id'])
    opened = [r['event_time'] for r in events if r['event'] == 'Email Opened']
    clicked = [r['event_time'] for r in events if r['event'] == 'Email Link Clicked']
    expected[customer] = {
        'last_event_at': events[-1]['event_time'],
        'recently_viewed': viewed[:10],
        'cart': dict(cart),
        'orders': len(orders - cancelled),
        'first_name': names[-1] if names else (crm.get(customer, {}).get('first_name') or None),
        'engagement': {'last_email_open_at': max(opened) if opened else None,
                       'last_email_click_at': max(clicked) if clicked else None},
    }
  return expected


def test_cart_triggers_are_published_to_the_triggers_topic(local_stack, unique_name, sample):
  data, _ = sample
  topic, subscription = publish.ensure_topic_and_subscription(
      PROJECT, f'{unique_name}-triggers', f'{unique_name}-worker')
  assert run.main([
      f'--events={data}/events-*.ndjson.gz', f'--customers={data}/customers.csv',
      f'--catalog={data}/catalog.csv', f'--project={PROJECT}', '--runner=FnApiRunner',
      f'--dataset={unique_name}', f'--collection={unique_name}',
      f'--triggers_topic={topic}']) == 0
  bq = bigquery_client.cloud_client(PROJECT)
  expected = {r['trigger_id']: r['customer_id'] for r in bq.query(
      f'SELECT trigger_id, customer_id FROM `{PROJECT}.{unique_name}.cart_triggers`').result()}
  assert expected
  received = {}
  with pubsub_v1.SubscriberClient() as subscriber:
    for _ in range(20):
      # The run has finished: all it published is in the subscription. Once every expected
      # trigger is in, one short pull is enough to see that nothing else came.
      short = len(received) >= len(expected)
      reply = subscriber.pull(subscription=subscription, max_messages=500,
                              timeout=2 if short else 10)
      if not reply.received_messages:
        break
      for message in reply.received_messages:
        body = json.loads(message.message.data)
        assert message.message.attributes['trigger_id'] == body['trigger_id']
        assert body['trigger_type'] == 'cart_abandoned' and body['cart']['abandoned'] is True
        received[body['trigger_id']] = body['customer_id']
      subscriber.acknowledge(subscription=subscription,
                             ack_ids=[m.ack_id for m in reply.received_messages])
  assert received == expected
