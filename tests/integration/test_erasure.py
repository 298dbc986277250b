"""`python -m pipeline.erase` against the emulators, on the warehouse and documents of a real batch
run and the sync worker's state: a customer's document, state and rows go, nobody else's do, every
run is logged, runs repeat."""
import base64
import collections
import csv
import datetime
import gzip
import json
import os
import uuid

import pytest
from google.cloud import bigquery, firestore

import schemas
from pipeline import erase, run
from scripts import generate_data
from transforms.rules import served
from transforms.settings import RedisTier
from transforms.sinks import bigquery_client
from transforms.sinks.redis_tier import RedisWriter

PROJECT = 'demo-local'
QUOTED = 'o\'brien"q'  # an id with both quotes: only query parameters handle it
QUOTED_ANON = 'anon-quoted-device'
# Sync-state destinations: one with a document of its own, one that exists only as the parent of
# its customers' states (as the sync worker leaves it).
DESTINATIONS = ('braze', 'klaviyo')


def _event(kind, at, message_id, user_id=None, anonymous_id=None, **fields):
  event = {'type': kind, 'messageId': message_id, 'timestamp': at}
  if user_id:
    event['userId'] = user_id
  if anonymous_id:
    event['anonymousId'] = anonymous_id
  event.update(fields)
  return json.dumps(event)


def _extra_input(data, manifest):
  """Lines the generator does not write, so that customers have rows in every table: a quoted
  customer id with stitched anonymous browsing and an abandoned cart; for every customer a dead
  letter as truncated JSON, one as invalid UTF-8 (stored base64) and a bad CRM row; a truncated
  line for every anonymousId that is linked to a customer."""
  start = datetime.datetime.fromisoformat(manifest['start'].replace('Z', '+00:00'))
  at = lambda hours: (start + datetime.timedelta(hours=hours)).strftime('%Y-%m-%dT%H:%M:%S.000Z')
  product = {'product_id': 'p0001', 'name': 'Thing', 'category': 'Shoes', 'price': 10.0}
  lines = [
      _event('page', at(1), 'q-1', anonymous_id=QUOTED_ANON, name='Home'),
      _event('track', at(2), 'q-2', anonymous_id=QUOTED_ANON, event='Product Viewed',
             properties=product),
      _event('identify', at(3), 'q-3', QUOTED, QUOTED_ANON,
             traits={'email': 'Quoted@Example.com', 'first_name': 'Q'}),
      _event('track', at(4), 'q-4', QUOTED, QUOTED_ANON, event='Product Added',
             properties={**product, 'quantity': 2}),
  ]
  customers = [row['customer_id'] for row in csv.DictReader(open(data / 'customers.csv'))]
  linked = set()
  for path in data.glob('events-*.ndjson.gz'):
    for line in gzip.open(path):
      try:
        event = json.loads(line)
      except ValueError:
        continue
      if isinstance(event, dict) and (event.get('userId') or event.get('user_id')) and (
          event.get('anonymousId') or event.get('anonymous_id')):
        linked.add(event.get('anonymousId') or event.get('anonymous_id'))
  for customer in customers + [QUOTED]:
    lines.append(f'{{"type":"track","userId":{json.dumps(customer)},"event":"Product Vie')
  for anonymous_id in sorted(linked) + [QUOTED_ANON]:
    lines.append(f'{{"type":"page","anonymousId":{json.dumps(anonymous_id)},"name":')
  raw = '\n'.join(lines).encode() + b'\n'
  raw += b''.join(b'{"type":"track","userId":' + json.dumps(c).encode() + b',"event":"\xff"}\n'
                  for c in customers)
  (data / 'extra.ndjson').write_bytes(raw)
  with open(data / 'customers.csv', 'a', newline='') as crm:
    for customer in customers:
      crm.write(f'{customer},too,few,fields\n')


@pytest.fixture(scope='module')
def world(local_stack, tmp_path_factory):
  """One batch run (2,000 generated events, 50 customers, plus `_extra_input`) into its own
  dataset and collection; the tests erase different customers of it."""
  data = tmp_path_factory.mktemp('erasure-sample')
  manifest = generate_data.generate(data, customers=50, products=30, events=2000, seed=11,
                                    files=1)
  _extra_input(data, manifest)
  # An audience every customer with a document is in: audience_membership has their rows too.
  audiences = data / 'audiences.yaml'
  audiences.write_text("version: 1\naudiences:\n  - key: everyone\n    when: 'customer_id != \"\"'\n")
  name = f'e{uuid.uuid4().hex[:10]}'
  summary = run.run([
      f'--events={data}/events-*.ndjson.gz,{data}/extra.ndjson',
      f'--customers={data}/customers.csv', f'--catalog={data}/catalog.csv',
      f'--project={PROJECT}', '--runner=FnApiRunner', f'--dataset={name}',
      f'--collection={name}', f'--audiences={audiences}'])
  assert not summary.problems(), summary.render()
  return name


def _bq():
  return bigquery_client.cloud_client(PROJECT)


def _rows(dataset, record):
  return [dict(r) for r in _bq().query(
      f'SELECT * FROM `{PROJECT}.{dataset}.{schemas.table_id(record)}`').result()]


def _snapshot(dataset):
  """Every table's rows, as multisets of canonical JSON (to compare before and after)."""
  return {record: collections.Counter(json.dumps(r, sort_keys=True, default=str)
                                      for r in _rows(dataset, record))
          for record in schemas.TABLES}


def _owned(dataset, customer):
  """The customer's rows per table, by the rules of docs/DATA_CONTRACT.md "Erasure", computed
  here from all rows (independently of pipeline.erase's SQL). Returns (anonymousIds, rows)."""
  events = _rows(dataset, 'events')
  anonymous = {e['anonymous_id'] for e in events
               if e['user_id'] == customer and e['anonymous_id']}
  needles = [json.dumps(v) for v in {customer} | anonymous]

  def dead_letter_is_theirs(d):
    text = d['payload']
    if d['payload_encoding'] == 'base64':
      text = base64.b64decode(text).decode('utf-8', 'replace')
    if d['step'] == 'ReadCustomers' and text.split(',')[0] == customer:
      return True
    return any(n in text for n in needles)

  owned = {
      'events': [e for e in events if e['user_id'] == customer or (
          e['user_id'] is None and e['anonymous_id'] in anonymous)],
      'customer_activity_hourly': [
          h for h in _rows(dataset, 'customer_activity_hourly')
          if h['customer_id'] in ({customer} if h['identified'] else anonymous)],
      'customer_profiles': [p for p in _rows(dataset, 'customer_profiles')
                            if p['customer_id'] == customer],
      'cart_triggers': [t for t in _rows(dataset, 'cart_triggers')
                        if t['customer_id'] == customer],
      'audience_membership': [m for m in _rows(dataset, 'audience_membership')
                              if m['customer_id'] == customer],
      'dead_letter': [d for d in _rows(dataset, 'dead_letter') if dead_letter_is_theirs(d)],
  }
  return anonymous, {record: collections.Counter(json.dumps(r, sort_keys=True, default=str)
                                                 for r in rows)
                     for record, rows in owned.items()}


def _document(dataset, customer):
  return firestore.Client(project=PROJECT).collection(dataset).document(customer).get()


def _log_rows(dataset, customer):
  job = _bq().query(
      f'SELECT * FROM `{PROJECT}.{dataset}.erasure_log` WHERE customer_id = @id '
      f'ORDER BY completed_at',
      job_config=bigquery.QueryJobConfig(
          query_parameters=[bigquery.ScalarQueryParameter('id', 'STRING', customer)]))
  return [dict(r) for r in job.result()]


def _rich_customers(dataset):
  """Customers with a document, a trigger and stitched anonymous-only events, most rows first."""
  anonymous_only = {e['anonymous_id'] for e in _rows(dataset, 'events') if not e['user_id']}
  links = collections.defaultdict(set)
  for e in _rows(dataset, 'events'):
    if e['user_id'] and e['anonymous_id'] in anonymous_only:
      links[e['user_id']].add(e['anonymous_id'])
  triggered = {t['customer_id'] for t in _rows(dataset, 'cart_triggers')}
  candidates = sorted(c for c in triggered & set(links) if c != QUOTED
                      and _document(dataset, c).exists)
  assert len(candidates) >= 3, 'the sample needs customers with rows in every table'
  return candidates


def _sync_state(collection, customers):
  """The sync worker's state of `customers` for both DESTINATIONS, in a new collection, as
  connector/sync/state.py writes it."""
  db = firestore.Client(project=PROJECT)
  db.collection(collection).document(DESTINATIONS[0]).set({'note': 'a destination document'})
  for destination in DESTINATIONS:
    for customer in customers:
      (db.collection(collection).document(destination).collection('customers')
       .document(customer).set({'attributes': {'first_name': ['ab12', 1764633600123456]}}))


def _states(collection, customer):
  """The destinations holding a sync state of `customer`."""
  db = firestore.Client(project=PROJECT)
  return [d for d in DESTINATIONS if db.collection(collection).document(d)
          .collection('customers').document(customer).get().exists]


def _erase(*args):
  return erase.main([f'--project={PROJECT}', *args])


def _counts(owned):
  return {schemas.table_id(r): sum(c.values()) for r, c in owned.items()}


def test_erase_one_customer_everywhere_then_again(world, capsys):
  customer, other = _rich_customers(world)[:2]
  anonymous, owned = _owned(world, customer)
  assert anonymous and all(owned.values())  # rows in every table, stitched browsing too
  state = f'{world}-sync-{uuid.uuid4().hex[:6]}'
  _sync_state(state, [customer, other])
  # The serving tier's entries of both (as the writer puts them; the other one's must stay).
  tier = RedisTier(os.environ['REDIS_URL'], f'{world}:')
  RedisWriter(tier).put({c: served.entry({'customer_id': c}, 1) for c in (customer, other)})
  redis_args = (f'--redis_url={tier.url}', f'--redis_key_prefix={tier.prefix}')
  before = _snapshot(world)

  assert _erase(f'--dataset={world}', f'--collection={world}', f'--sync_state_collection={state}',
                *redis_args, '--customer_id', customer) == 0
  out = capsys.readouterr().out
  assert 'Firestore documents deleted: 1' in out
  assert f'sync state ({state}) deleted: braze 1, klaviyo 1' in out
  assert 'Redis serving tier entries deleted: 1' in out
  assert RedisWriter(tier).present([customer, other]) == {other}

  assert not _document(world, customer).exists
  # The customer's state is gone under both destinations; the other customer's is kept.
  assert _states(state, customer) == [] and _states(state, other) == list(DESTINATIONS)
  after = _snapshot(world)
  for record in schemas.TABLES:
    # Exactly the customer's rows are gone: everybody else's are all still there.
    assert after[record] == before[record] - owned[record], record
  _, left = _owned(world, customer)
  assert not any(left.values())
  (logged,) = _log_rows(world, customer)
  assert logged['dry_run'] is False and logged['firestore_document_deleted'] is True
  assert logged['firestore_document'] == f'{world}/{customer}'
  assert logged['anonymous_ids_linked'] == len(anonymous)
  assert {t['table_name']: t['rows_deleted'] for t in logged['tables']} == _counts(owned)
  assert logged['rows_deleted_total'] == sum(_counts(owned).values())
  assert logged['tool_version'] == erase.TOOL_VERSION
  assert logged['requested_at'] <= logged['completed_at']

  # Again: nothing left to delete, logged again with zeros, still exit 0.
  assert _erase(f'--dataset={world}', f'--collection={world}', f'--sync_state_collection={state}',
                *redis_args, '--customer_id', customer) == 0
  out = capsys.readouterr().out
  assert f'sync state ({state}) deleted: none' in out
  assert 'Redis serving tier entries deleted: 0' in out
  assert _snapshot(world) == after
  assert _states(state, other) == list(DESTINATIONS)
  first, second = _log_rows(world, customer)
  assert second['run_id'] != first['run_id']
  assert second['firestore_document_deleted'] is False
  assert second['rows_deleted_total'] == 0
  assert {t['rows_deleted'] for t in second['tables']} == {0}


def test_dry_run_deletes_nothing_and_logs_what_it_would(world, capsys):
  customer = _rich_customers(world)[1]
  _, owned = _owned(world, customer)
  state = f'{world}-sync-{uuid.uuid4().hex[:6]}'
  _sync_state(state, [customer])
  before = _snapshot(world)
  assert _erase(f'--dataset={world}', f'--collection={world}', f'--sync_state_collection={state}',
                '--customer_id', customer, '--dry_run') == 0
  out = capsys.readouterr().out
  assert 'dry run' in out and f'sync state ({state}) would delete: braze 1, klaviyo 1' in out
  assert _snapshot(world) == before
  assert _document(world, customer).exists
  assert _states(state, customer) == list(DESTINATIONS)
  (logged,) = _log_rows(world, customer)
  assert logged['dry_run'] is True and logged['firestore_document_deleted'] is True
  assert {t['table_name']: t['rows_deleted'] for t in logged['tables']} == _counts(owned)


def test_batch_file_with_a_quoted_id_and_an_unknown_id(world, tmp_path, caplog):
  customer = _rich_customers(world)[2]
  unknown = f'no-such-customer-{uuid.uuid4().hex[:6]}'
  owned = {c: _owned(world, c)[1] for c in (customer, QUOTED)}
  assert all(owned[QUOTED].values())  # the quoted id has rows in every table too
  assert _document(world, QUOTED).exists
  state = f'{world}-sync-{uuid.uuid4().hex[:6]}'
  _sync_state(state, [customer, QUOTED])
  before = _snapshot(world)
  ids = tmp_path / 'ids.txt'
  ids.write_text(f'{customer}\n\n{QUOTED}\n{unknown}\n{customer}\n')  # blank line, duplicate

  caplog.set_level('INFO', logger='pipeline.erase')
  assert _erase(f'--dataset={world}', f'--collection={world}', f'--sync_state_collection={state}',
                f'--customer_ids_file={ids}', '--chunk_size=2') == 0
  # Two chunks (2 + 1 customers), each followed by a progress line.
  assert [r.getMessage() for r in caplog.records if 'customers (' in r.getMessage()] == [
      'erased 2/3 customers (67%)', 'erased 3/3 customers (100%)']

  after = _snapshot(world)
  for record in schemas.TABLES:
    assert after[record] == before[record] - owned[customer][record] - owned[QUOTED][record]
  for c in (customer, QUOTED):
    assert not _document(world, c).exists
    assert not any(_owned(world, c)[1].values())
    assert _states(state, c) == []
  logged = {c: _log_rows(world, c) for c in (customer, QUOTED, unknown)}
  assert all(len(rows) == 1 for rows in logged.values())
  assert len({rows[0]['run_id'] for rows in logged.values()}) == 1
  for c in (customer, QUOTED):
    (row,) = logged[c]
    assert row['firestore_document_deleted'] is True
    assert {t['table_name']: t['rows_deleted'] for t in row['tables']} == _counts(owned[c])
  (row,) = logged[unknown]
  assert row['firestore_document_deleted'] is False and row['rows_deleted_total'] == 0
  assert row['anonymous_ids_linked'] == 0


def test_missing_dataset_is_a_usage_error(local_stack, unique_name, capsys):
  assert _erase(f'--dataset={unique_name}', '--customer_id', 'c00001') == 2
  assert capsys.readouterr().err.strip() == (
      f'error: BigQuery dataset {PROJECT}.{unique_name} does not exist')
