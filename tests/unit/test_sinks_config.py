"""Sink configuration that needs no emulator: argument checks, table definitions, emulator switch."""
import pickle

import pytest

from transforms.settings import BigQueryTarget, FirestoreLocation
from transforms.sinks import bigquery, bigquery_client, firestore


def test_table_definition_is_partitioned_and_clustered_from_the_schema():
  table = bigquery.table_definition('demo-local', 'ds', 'events')
  assert table.table_id == 'events'
  assert (table.time_partitioning.type_, table.time_partitioning.field) == ('DAY', 'event_time')
  assert table.clustering_fields == ['user_id', 'event']
  assert [f.name for f in table.schema][:3] == ['message_id', 'type', 'event']


def test_write_table_rejects_bad_configuration():
  with pytest.raises(ValueError, match='unknown BigQuery write method'):
    bigquery.WriteTable('events', BigQueryTarget('p', 'ds', method='CARRIER_PIGEON'))
  with pytest.raises(ValueError, match='temp_location'):
    bigquery.WriteTable('events', BigQueryTarget('p', 'ds', method=bigquery.FILE_LOADS))
  with pytest.raises(ValueError, match='project and a dataset'):
    bigquery.WriteTable('events', BigQueryTarget('', 'ds'))
  # The production-only method is accepted as configuration (it needs Java at run time).
  bigquery.WriteTable('events', BigQueryTarget('p', 'ds', method=bigquery.STORAGE_WRITE_API))


def test_emulator_endpoint_follows_the_environment(monkeypatch):
  monkeypatch.delenv(bigquery_client.EMULATOR_ENV, raising=False)
  assert bigquery_client.emulator_endpoint() is None
  assert bigquery_client.beam_test_client('p') is None
  monkeypatch.setenv(bigquery_client.EMULATOR_ENV, '127.0.0.1:9050/')
  assert bigquery_client.emulator_endpoint() == 'http://127.0.0.1:9050'
  client = bigquery_client.beam_test_client('demo-local')
  assert client.url == 'http://127.0.0.1:9050/bigquery/v2/'
  clone = pickle.loads(pickle.dumps(client))  # Beam ships it to workers inside the DoFn
  assert (clone.url, clone._project) == (client.url, 'demo-local')


@pytest.mark.parametrize('doc_id, ok', [
    ('c00001', True), ('Zoë-42', True), ('', False), ('a/b', False), ('.', False), ('..', False),
    ('__name__', False), ('x' * 1501, False), (None, False)])
def test_document_ids_firestore_cannot_store_are_caught(doc_id, ok):
  assert (firestore.document_id_problem(doc_id) is None) == ok


def test_write_documents_rejects_bad_configuration():
  with pytest.raises(ValueError, match='project and a collection'):
    firestore.WriteDocuments(FirestoreLocation('', 'customers'))
  with pytest.raises(ValueError, match='top-level collection'):
    firestore.WriteDocuments(FirestoreLocation('p', 'a/b/c'))


def test_a_row_bigquery_rejects_becomes_a_dead_letter_with_the_row_and_the_reason():
  """The per-row rejection path (WriteToBigQuery's failed_rows_with_errors). The BigQuery
  emulator never rejects single rows (it accepts unknown columns and answers 500, which Beam
  retries, to a type error), so this path is checked here, without it."""
  import base64
  import orjson
  fn = bigquery._RejectedToDeadLetterFn('events', 'WriteEvents')
  row = {'message_id': 'm1', 'quantity': 'abc'}
  errors = [{'reason': 'invalid', 'location': 'quantity', 'message': 'Cannot convert'}]
  [record] = list(fn.process(('demo-local:ds.events', row, errors)))
  assert record['failure_type'] == bigquery.SINK_REJECTED == 'sink_rejected'
  assert record['step'] == 'WriteEvents'
  assert 'demo-local:ds.events' in record['error_message'] and 'Cannot convert' in \
      record['error_message']
  payload = record['payload'] if record['payload_encoding'] != 'base64' else \
      base64.b64decode(record['payload']).decode()
  assert orjson.loads(payload) == row
