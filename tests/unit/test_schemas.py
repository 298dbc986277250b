import fastavro
import pytest

import schemas


@pytest.mark.parametrize('record', schemas.TABLES)
def test_every_table_schema_is_valid_avro(record):
  parsed = fastavro.parse_schema(schemas.avro_schema(record))
  assert parsed['type'] == 'record'


def test_events_bigquery_schema_is_derived_from_avro():
  fields = {f['name']: f for f in schemas.bigquery_fields('events')}
  assert [f['name'] for f in schemas.bigquery_fields('events')] == [
      f['name'] for f in schemas.avro_schema('events')['fields']]
  assert fields['message_id'] == {**fields['message_id'], 'type': 'STRING', 'mode': 'REQUIRED'}
  assert (fields['event']['type'], fields['event']['mode']) == ('STRING', 'NULLABLE')
  assert (fields['event_time']['type'], fields['event_time']['mode']) == ('TIMESTAMP', 'REQUIRED')
  assert (fields['sent_at']['type'], fields['sent_at']['mode']) == ('TIMESTAMP', 'NULLABLE')
  assert fields['properties']['type'] == 'JSON'
  assert fields['message_id']['description']


def test_partitioning_and_clustering_come_from_the_schema_file():
  assert schemas.table_id('events') == 'events'
  assert schemas.time_partitioning('events') == {'type': 'DAY', 'field': 'event_time'}
  assert schemas.clustering_fields('events') == ['user_id', 'event']
  assert schemas.time_partitioning('dead_letter') == {'type': 'DAY', 'field': 'failed_at'}
  # The partitioning field is a required TIMESTAMP column of the same table.
  for record in schemas.TABLES:
    field = schemas.time_partitioning(record)['field']
    by_name = {f['name']: f for f in schemas.bigquery_fields(record)}
    assert by_name[field]['type'] == 'TIMESTAMP'
    for column in schemas.clustering_fields(record):
      assert column in by_name


def test_nested_and_repeated_avro_types_map_to_bigquery():
  field = {'name': 'items', 'type': {'type': 'array', 'items': {
      'type': 'record', 'name': 'Item', 'fields': [
          {'name': 'price', 'type': ['null', 'double']},
          {'name': 'qty', 'type': 'long'}]}}}
  assert schemas._bq_field(field) == {
      'name': 'items', 'mode': 'REPEATED', 'type': 'RECORD', 'fields': [
          {'name': 'price', 'mode': 'NULLABLE', 'type': 'FLOAT'},
          {'name': 'qty', 'mode': 'REQUIRED', 'type': 'INTEGER'}]}
  with pytest.raises(ValueError, match='no BigQuery mapping'):
    schemas._bq_field({'name': 'm', 'type': {'type': 'map', 'values': 'string'}})
  with pytest.raises(ValueError, match='unions'):
    schemas._bq_field({'name': 'u', 'type': ['null', 'string', 'long']})


def test_to_bigquery_row_converts_times_and_json():
  record = {'message_id': 'm', 'type': 'track', 'event_time': 1_700_000_000_123_456,
            'properties': {'price': 1.5, 'name': 'Zoë'}, 'source': 'file:x',
            'ingested_at': 0, 'sent_at': None}
  row = schemas.to_bigquery_row('events', record)
  assert row['event_time'] == '2023-11-14T22:13:20.123456Z'
  assert row['ingested_at'] == '1970-01-01T00:00:00.000000Z'
  assert row['properties'] == '{"price":1.5,"name":"Zoë"}'
  assert row['sent_at'] is None and row['user_id'] is None
  assert set(row) == {f['name'] for f in schemas.bigquery_fields('events')}


def test_micros_round_trip():
  dt = schemas.micros_to_datetime(1_700_000_000_123_456)
  assert schemas.datetime_to_micros(dt) == 1_700_000_000_123_456
  assert schemas.datetime_to_micros(dt.replace(tzinfo=None)) == 1_700_000_000_123_456


def test_unknown_schema_is_a_clear_error():
  with pytest.raises(ValueError, match='unknown record schema'):
    schemas.avro_schema('nope')


def test_supported_types_come_from_the_input_contract():
  assert schemas.supported_event_types() == (
      'track', 'identify', 'page', 'screen', 'group', 'alias')


def test_group_id_is_a_nullable_column_added_last_and_the_avro_input_carries_the_new_ids():
  # Last: a table created before the column gets the same order from ALTER TABLE ADD COLUMN
  # (docs/DEPLOY.md).
  fields = schemas.bigquery_fields('events')
  assert fields[-1] == {**fields[-1], 'name': 'group_id', 'type': 'STRING', 'mode': 'NULLABLE'}
  assert fields[-1]['description']
  avro_input = {f['name'] for f in schemas.segment_event_avro_schema()['fields']}
  assert {'previousId', 'groupId'} <= avro_input


def test_encoded_records_decode_to_equal_records_decimals_included():
  import decimal
  import schemas
  event = {'message_id': 'm1', 'price': decimal.Decimal('18.990000001'), 'total': None,
           'revenue': decimal.Decimal('-0.5'), 'quantity': 2, 'event_time': 1764374400000000,
           'properties': {'nested': [1, 2.5, 'x', None, {'a': True}]}, 'user_id': None}
  data = schemas.encode_record('events', event)
  assert isinstance(data, bytes)
  back = schemas.decode_record('events', data)
  assert back == event
  assert isinstance(back['price'], decimal.Decimal) and isinstance(back['revenue'],
                                                                  decimal.Decimal)
  assert event['price'] == decimal.Decimal('18.990000001')  # the input is not modified
