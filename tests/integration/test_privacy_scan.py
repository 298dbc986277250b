"""Raw emails are never stored: a batch run over generated data plus events that carry emails in
every place the contract covers (and bad lines with emails that become dead letters), then every
value of every row of every BigQuery table in the dataset and of every Firestore document the run
wrote is scanned for an email address."""
import base64
import gzip
import json
import re
import uuid

import pytest
from google.cloud import firestore

import schemas
from pipeline import run
from scripts import generate_data
from transforms.rules import events as event_rules
from transforms.sinks import bigquery_client

PROJECT = 'demo-local'
# Deliberately broader than the pipeline's own pattern (transforms/rules/dead_letters.py).
EMAIL = re.compile(r'[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+')


def find_emails(value, path='$'):
  """[(path, address)] for every email address in `value`: strings (JSON text included, it is
  text), dict keys and values, lists and tuples, bytes. Other scalars cannot hold one."""
  found = []
  stack = [(path, value)]
  while stack:
    where, item = stack.pop()
    if isinstance(item, bytes):
      item = item.decode('utf-8', errors='replace')
    if isinstance(item, str):
      found.extend((where, m.group()) for m in EMAIL.finditer(item))
    elif isinstance(item, dict):
      for key, child in item.items():
        stack.append((f'{where}.<key>', key))
        stack.append((f'{where}.{key}', child))
    elif isinstance(item, (list, tuple)):
      stack.extend((f'{where}[{i}]', child) for i, child in enumerate(item))
  return found


def find_emails_in_row(row, path):
  """`find_emails`, plus a dead letter's base64 payload decoded (its bytes were not UTF-8)."""
  found = find_emails(row, path)
  if row.get('payload_encoding') == 'base64' and isinstance(row.get('payload'), str):
    found += find_emails(base64.b64decode(row['payload']), f'{path}.payload<base64>')
  return found


def test_the_scanner_finds_a_planted_email():
  """The scan below can fail: an address anywhere in a row is found."""
  clean = {'a': 'no address here', 'b': [1, 2.5, None, True, {'c': '[email-sha256:ab12]'}],
           'd': '{"traits": {"first_name": "Ann"}}', 'e': b'bytes', 'payload': 'e30=',
           'payload_encoding': 'base64'}
  assert find_emails_in_row(clean, '$') == []
  for planted, where in [
      ({**clean, 'a': 'mail Ann.Lee+x@Example.co.uk now'}, '$.a'),
      ({**clean, 'b': [1, {'c': [{'deep': 'a@b.io'}]}]}, '$.b[1].c[0].deep'),
      ({**clean, 'd': '{"traits": {"email": "ann@example.com"}}'}, '$.d'),  # JSON text column
      ({**clean, 'x@y.org': 1}, '$.<key>'),
      ({**clean, 'e': b'\xff ann@example.com'}, '$.e'),
      ({**clean, 'payload': base64.b64encode(b'\xff{"e":"ann@example.com"}').decode()},
       '$.payload<base64>'),
  ]:
    hits = find_emails_in_row(planted, '$')
    assert [h[0] for h in hits] == [where], planted


def test_an_email_outside_the_email_fields_is_not_stored():
  event = {'type': 'track', 'event': 'Product Viewed', 'userId': 'c1', 'messageId': 'm1',
           'timestamp': '2026-11-01T00:00:00Z',
           'properties': {'recipient': 'ann@example.com'},
           'context': {'traits': {'Email': 'ann@example.com'},
                       'page': {'url': 'https://shop.example.com/?e=ann@example.com'}}}
  record = event_rules.parse_event(json.dumps(event).encode(), 'file:x', 0)
  assert find_emails(record) == []


def _with_emails(data, manifest):
  """Events with emails in every field the contract hashes, and bad lines and reference rows with
  emails that become dead letters. Returns how many dead letters carry an (redacted) email."""
  at = manifest['start']
  ok = lambda **fields: json.dumps({'messageId': uuid.uuid4().hex, 'timestamp': at,
                                    'userId': 'c00001', **fields})
  lines = [
      ok(type='identify', traits={'email': '  Padded.Upper@EXAMPLE.com ', 'first_name': 'A'}),
      ok(type='track', event='Order Completed',
         properties={'email': 'buyer@example.org', 'order_id': 'o1', 'total': 5}),
      ok(type='page', name='Home', context={'traits': {'email': 'ctx@example.net'}}),
      # A group's traits hold the group's address: tokenised, not hashed as the customer's.
      ok(type='group', groupId='acct-1', traits={'name': 'Initech', 'email': 'office@example.com'}),
  ]
  bad = [
      b'{"type":"identify","userId":"c00002","traits":{"email":"trunc@example.com"',  # invalid
      b'{"type":"identify","userId":"c00002","traits":{"email":"bin@example.com"},"n":"\xff"}',
      json.dumps({'type': 'alias', 'messageId': 'x', 'userId': 'c00003', 'timestamp': at,
                  'traits': {'email': 'alias@example.com'}}).encode(),            # no previousId
      json.dumps({'type': 'identify', 'userId': 'c00003', 'timestamp': at,       # no messageId
                  'traits': {'email': 'nomsg@example.com'}}).encode(),
      json.dumps({'type': 'identify', 'messageId': 'big', 'userId': 'c00004', 'timestamp': at,
                  'traits': {'email': 'big@example.com', 'bio': 'x' * 40000}}).encode(),  # size
  ]
  (data / 'emails.ndjson').write_bytes('\n'.join(lines).encode() + b'\n' + b'\n'.join(bad) + b'\n')
  with open(data / 'customers.csv', 'a', newline='') as crm:
    crm.write('c09999,crm.bad@example.com,too,few\n')
  with open(data / 'catalog.csv', 'a', newline='') as catalog:
    catalog.write('p9999,owner@example.com\n')
  return len(bad) + 2


def test_no_raw_email_in_any_table_or_document(local_stack, unique_name, tmp_path):
  data = tmp_path / 'sample'
  manifest = generate_data.generate(data, customers=50, products=30, events=2000, seed=5,
                                    files=1)
  redacted_dead_letters = _with_emails(data, manifest)
  # The input does carry raw emails (the generator's identify traits and the CRM, plus ours).
  input_emails = sum(len(find_emails(gzip.open(p).read())) for p in data.glob('*.gz'))
  input_emails += sum(len(find_emails(data.joinpath(name).read_bytes()))
                      for name in ('emails.ndjson', 'customers.csv', 'catalog.csv'))
  assert input_emails > 50

  popularity = f'{unique_name}-popularity'
  summary = run.run([
      f'--events={data}/events-*.ndjson.gz,{data}/emails.ndjson',
      f'--customers={data}/customers.csv', f'--catalog={data}/catalog.csv',
      f'--project={PROJECT}', '--runner=FnApiRunner', f'--dataset={unique_name}',
      f'--collection={unique_name}', f'--popularity_collection={popularity}'])
  assert not summary.problems(), summary.render()

  bq = bigquery_client.cloud_client(PROJECT)
  tables = sorted(t.table_id for t in bq.list_tables(f'{PROJECT}.{unique_name}'))
  assert set(map(schemas.table_id, schemas.TABLES)) <= set(tables)
  found, scanned = [], {}
  for table in tables:
    rows = [dict(r) for r in bq.query(f'SELECT * FROM `{PROJECT}.{unique_name}.{table}`')]
    scanned[table] = len(rows)
    for i, row in enumerate(rows):
      found += find_emails_in_row(row, f'{table}[{i}]')
      if table == 'dead_letter':
        assert '@' not in row['error_message']
  # Every table the run fills was scanned with rows in it (cart_triggers may be empty).
  assert all(scanned[t] for t in ('events', 'dead_letter', 'customer_activity_hourly',
                                  'customer_profiles')), scanned
  # The emails were there and were hashed, not dropped unseen.
  hashed = list(bq.query(
      f'SELECT COUNTIF(email_sha256 IS NOT NULL) AS n FROM `{PROJECT}.{unique_name}.events`'))
  assert hashed[0]['n'] >= 3
  redacted = list(bq.query(
      f"SELECT COUNTIF(STRPOS(payload, '[email-sha256:') > 0) AS text, "
      f"COUNTIF(payload_encoding = 'base64') AS b64 FROM `{PROJECT}.{unique_name}.dead_letter`"))
  assert redacted[0]['text'] + redacted[0]['b64'] >= redacted_dead_letters

  documents = 0
  db = firestore.Client(project=PROJECT)
  collections = [db.collection(unique_name), db.collection(popularity)]
  while collections:
    collection = collections.pop()
    for doc in collection.stream():
      documents += 1
      found += find_emails({doc.id: doc.to_dict()}, doc.reference.path)
      collections.extend(doc.reference.collections())
  assert documents > 0
  assert found == [], found[:20]
