"""pipeline.erase without emulators: arguments, input files, one-line errors, the matching rules
and the erasure_log schema."""
import argparse
import base64
import json

import fastavro
import pytest

import schemas
from connector.sync import state as sync_state
from connector.sync.config import SyncConfig
from pipeline import erase
from pipeline.options import PersonalizationOptions


def _args(*argv):
  return erase.parse_args(['--project=p', *argv])


def test_defaults_are_the_pipelines():
  args, ids = _args('--customer_id', 'c1')
  parser = argparse.ArgumentParser()
  PersonalizationOptions._add_argparse_args(parser)
  job = parser.parse_args([])
  assert (args.dataset, args.collection, args.firestore_database) == (
      job.dataset, job.collection, job.firestore_database)
  assert (ids, args.dry_run, args.chunk_size) == (['c1'], False, erase.DEFAULT_CHUNK_SIZE)


def test_sync_state_is_where_the_sync_worker_keeps_it():
  args, _ = _args('--customer_id', 'c1')
  default = SyncConfig.__dataclass_fields__['state_collection'].default
  assert args.sync_state_collection == erase.DEFAULT_SYNC_STATE_COLLECTION == default
  assert erase.SYNC_STATE_CUSTOMERS == sync_state.CUSTOMERS


def test_ids_from_the_command_line_keep_order_and_drop_duplicates():
  _, ids = _args('--customer_id', 'c2', 'c1', '--customer_id', 'c2', 'o\'b"q', '--dry_run')
  assert ids == ['c2', 'c1', 'o\'b"q']


def test_ids_from_a_file(tmp_path):
  path = tmp_path / 'ids.txt'
  path.write_bytes('\ufeffc1\r\n\r\nc2\nc1\nJosé\n'.encode())  # BOM, CRLF, blank line, duplicate
  _, ids = _args(f'--customer_ids_file={path}')
  assert ids == ['c1', 'c2', 'José']


def test_project_from_the_environment(monkeypatch):
  monkeypatch.setenv('GOOGLE_CLOUD_PROJECT', 'from-env')
  args, _ = erase.parse_args(['--customer_id', 'c1'])
  assert args.project == 'from-env'


@pytest.mark.parametrize('argv, message', [
    ([], 'one of the arguments --customer_id --customer_ids_file is required'),
    (['--customer_id', 'c1', '--customer_ids_file', 'f'], 'not allowed with argument'),
    (['--customer_id', ''], '--customer_id: blank customer id'),
    (['--customer_id', '   '], '--customer_id: blank customer id'),
    (['--customer_id', ' c1'], "customer id ' c1' has leading or trailing whitespace"),
    (['--customer_id', 'c1', '--chunk_size=0'], '--chunk_size must be at least 1'),
    (['--customer_id', 'c1', '--dataset='], '--dataset must not be blank'),
    (['--customer_id', 'c1', '--sync_state_collection= '],
     '--sync_state_collection must not be blank'),
    (['--customer_id', 'c1', '--sync_state_collection=a/b'],
     "--sync_state_collection must be a top-level collection id (no \"/\"), got 'a/b'"),
    (['--customer_id', 'c1', '--no_such_option'], 'unrecognized arguments'),
])
def test_bad_arguments(argv, message):
  with pytest.raises(erase.UsageError) as raised:
    _args(*argv)
  assert message in str(raised.value)


def test_no_project(monkeypatch):
  monkeypatch.delenv('GOOGLE_CLOUD_PROJECT', raising=False)
  with pytest.raises(erase.UsageError, match='--project is required'):
    erase.parse_args(['--customer_id', 'c1'])


@pytest.mark.parametrize('content, message', [
    (b'', 'holds no customer ids'),
    (b'\n\n', 'holds no customer ids'),
    (b'c1\n  \nc2\n', 'line 2: blank customer id'),
    (b'c1\nc2 \n', "line 2: customer id 'c2 ' has leading or trailing whitespace"),
    (b'c1\n\xff\n', 'not UTF-8 text'),
])
def test_bad_files(tmp_path, content, message):
  path = tmp_path / 'ids.txt'
  path.write_bytes(content)
  with pytest.raises(erase.UsageError) as raised:
    _args(f'--customer_ids_file={path}')
  assert message in str(raised.value)


def test_missing_file_and_directory(tmp_path):
  with pytest.raises(erase.UsageError, match='no such file'):
    _args(f'--customer_ids_file={tmp_path}/nope.txt')
  with pytest.raises(erase.UsageError, match='is a directory'):
    _args(f'--customer_ids_file={tmp_path}')


def test_main_reports_bad_input_in_one_line_with_exit_2(tmp_path, capsys):
  (tmp_path / 'empty.txt').write_text('')
  assert erase.main(['--project=p', f'--customer_ids_file={tmp_path}/empty.txt']) == 2
  err = capsys.readouterr().err
  assert err == f'error: --customer_ids_file {tmp_path}/empty.txt: holds no customer ids\n'
  assert erase.main(['--project=p']) == 2
  assert len(capsys.readouterr().err.splitlines()) == 1


def test_help_exits_0(capsys):
  assert erase.main(['--help']) == 0
  out = capsys.readouterr().out
  assert '--customer_ids_file' in out and '--sync_state_collection' in out


def test_summary_reports_the_sync_state_per_destination():
  args, _ = _args('--customer_id', 'c1', 'c2', '--sync_state_collection=state')
  results = [erase.CustomerResult('c1', True, 0, {'events': 3}, ['braze', 'klaviyo']),
             erase.CustomerResult('c2', False, 0, {'events': 0}, ['braze'])]
  assert erase.summary(args, results).splitlines()[:3] == [
      '2 customers, Firestore documents deleted: 1',
      'sync state (state) deleted: braze 2, klaviyo 1',
      'BigQuery rows deleted: events 3']
  args.dry_run = True
  assert erase.summary(args, [erase.CustomerResult('c3')]).splitlines()[1] == (
      'sync state (state) would delete: none')


# ---- Matching rules ----------------------------------------------------------------------------

WHO = {'c1': {'c1', 'anon-1'}, 'o\'b"q': {'o\'b"q'}, 'José': {'José'}}


@pytest.mark.parametrize('payload, step, expected', [
    ('{"userId":"c1","event":"x"}', 'ParseEvents', {'c1'}),
    ('{"user_id": "c1"}', 'ParseEvents', {'c1'}),                   # RudderStack keys
    ('{"type":"track","userId":"c1","event":"Prod', 'ParseEvents', {'c1'}),   # truncated
    ('{"anonymousId":"anon-1"}', 'ParseEvents', {'c1'}),            # a linked anonymousId
    ('{"properties":{"referrer":"c1"}}', 'ParseEvents', {'c1'}),    # anywhere in the payload
    ('{"userId":"c10"}', 'ParseEvents', set()),                     # whole strings only
    ('{"userId":"xc1"}', 'ParseEvents', set()),
    ('{"userId":"o\'b\\"q"}', 'ParseEvents', {'o\'b"q'}),           # JSON-escaped quote
    ('{"userId":"Jos\\u00e9"}', 'ParseEvents', {'José'}),           # \u escape
    ('{"userId":"José"}', 'ParseEvents', {'José'}),                 # raw UTF-8
    ('c1,[email-sha256:ab],Ann', 'ReadCustomers', {'c1'}),          # CRM CSV row
    ('x,"c1",y', 'ReadCustomers', {'c1'}),
    ('c10,x', 'ReadCustomers', set()),
    ('c1,x', 'ParseEvents', set()),                                 # CSV rule for CRM rows only
    ('{"userId":"c1","also":"José"}', 'ParseEvents', {'c1', 'José'}),
])
def test_dead_letter_mentions(payload, step, expected):
  assert erase.dead_letter_mentions(payload, 'utf-8', step, WHO) == expected
  # The SQL pre-filter never drops a row the rule accepts.
  needles = erase.dead_letter_needles(v for values in WHO.values() for v in values)
  if expected:
    assert any(n in payload for n in needles)


def test_dead_letter_mentions_decodes_base64_payloads():
  raw = b'{"userId":"c1","event":"\xff"}'
  payload = base64.b64encode(raw).decode()
  assert erase.dead_letter_mentions(payload, 'base64', 'ParseEvents', WHO) == {'c1'}
  assert erase.dead_letter_mentions(payload, 'utf-8', 'ParseEvents', WHO) == set()


def test_json_string_forms():
  assert erase.json_string_forms('José') == {'"Jos\\u00e9"', '"José"'}
  assert erase.json_string_forms('o"q') == {json.dumps('o"q')}


def test_chunked():
  assert [list(c) for c in erase.chunked(['a', 'b', 'c'], 2)] == [['a', 'b'], ['c']]


# ---- Tables ------------------------------------------------------------------------------------


def test_every_warehouse_table_has_an_erasure_rule_and_events_go_last():
  # A new table in schemas.TABLES must get a rule here before the tool can run.
  assert sorted(erase.DELETE_ORDER) == sorted(schemas.TABLES)
  assert set(erase.ROW_RULES) | {'dead_letter'} == set(schemas.TABLES)
  assert erase.DELETE_ORDER[-1] == 'events'  # the anonymousId links are read from it


def test_erasure_log_schema():
  assert fastavro.parse_schema(schemas.avro_schema('erasure_log'))['type'] == 'record'
  assert 'erasure_log' not in schemas.TABLES  # the pipeline never writes it
  fields = {f['name']: f for f in schemas.bigquery_fields('erasure_log')}
  assert schemas.time_partitioning('erasure_log') == {'type': 'DAY', 'field': 'completed_at'}
  assert fields['completed_at']['type'] == 'TIMESTAMP'
  assert schemas.clustering_fields('erasure_log') == ['customer_id']
  assert (fields['tables']['type'], fields['tables']['mode']) == ('RECORD', 'REPEATED')
  assert [f['name'] for f in fields['tables']['fields']] == ['table_name', 'rows_deleted']
  row = schemas.to_bigquery_row('erasure_log', {
      'erasure_id': 'e', 'run_id': 'r', 'customer_id': 'c1', 'requested_at': 0,
      'completed_at': 1, 'dry_run': False, 'firestore_document': 'customers/c1',
      'firestore_database': '(default)', 'firestore_document_deleted': True,
      'anonymous_ids_linked': 0, 'tables': [{'table_name': 'events', 'rows_deleted': 2}],
      'rows_deleted_total': 2, 'tool_version': erase.TOOL_VERSION})
  assert row['completed_at'] == '1970-01-01T00:00:00.000001Z'
  assert row['tables'] == [{'table_name': 'events', 'rows_deleted': 2}]
