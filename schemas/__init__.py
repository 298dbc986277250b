"""Record shapes, defined once, and everything derived from them.

* `segment_event.schema.json` (JSON Schema, draft-07) is the input contract: the event validator is
  compiled from it with fastjsonschema.
* `<table>.avsc` (Avro) is the shape of each warehouse record. The BigQuery table schema, its
  partitioning and clustering (the record's `bigquery` attribute), the JSON rows sent to BigQuery and
  Avro writers are all derived from these files; nothing re-types them by hand.

This package imports nothing else of the project.
"""
from __future__ import annotations

import datetime as _dt
import decimal as _decimal
import functools
import json
import pathlib
from typing import Any, Callable

import fastjsonschema
import orjson

SCHEMA_DIR = pathlib.Path(__file__).parent
# Warehouse tables, in creation order. Each has a `<name>.avsc` file.
TABLES = ('events', 'dead_letter', 'customer_activity_hourly', 'customer_profiles',
          'cart_triggers', 'audience_membership')

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


@functools.cache
def avro_schema(name: str) -> dict:
  """The Avro schema of record `name` (a dict, as written in `<name>.avsc`)."""
  path = SCHEMA_DIR / f'{name}.avsc'
  if not path.exists():
    raise ValueError(f'unknown record schema {name!r}: no {path.name} in {SCHEMA_DIR}')
  return json.loads(path.read_text())


@functools.cache
def segment_event_schema() -> dict:
  """The input contract (JSON Schema) for Segment events."""
  return json.loads((SCHEMA_DIR / 'segment_event.schema.json').read_text())


def segment_event_avro_schema() -> dict:
  """The Avro shape of Segment events read from `.avro` input files."""
  return avro_schema('segment_event')


@functools.cache
def segment_event_validator() -> Callable[[Any], Any]:
  """A compiled validator: raises fastjsonschema.JsonSchemaValueException naming the field."""
  return fastjsonschema.compile(segment_event_schema())


@functools.cache
def customer_document_schema() -> dict:
  """The serving document contract (customers/{customer_id})."""
  return json.loads((SCHEMA_DIR / 'customer_document.schema.json').read_text())


@functools.cache
def profile_change_schema() -> dict:
  """The profile change message contract (--profile_changes_topic, connector sync and stream)."""
  return json.loads((SCHEMA_DIR / 'profile_change.schema.json').read_text())


@functools.cache
def profile_change_validator() -> Callable[[Any], Any]:
  """A compiled validator of profile change messages (raises JsonSchemaValueException)."""
  return fastjsonschema.compile(profile_change_schema())


def served_document_fields() -> tuple[str, ...]:
  """The top-level fields the ESP connector returns, in contract order."""
  return tuple(customer_document_schema()['served'])


def supported_event_types() -> tuple[str, ...]:
  """The Segment call types the input contract accepts (its `type` enum), in contract order."""
  return tuple(segment_event_schema()['properties']['type']['enum'])


# ---- BigQuery, derived from Avro ---------------------------------------------------------------

_AVRO_TO_BQ = {
    'string': 'STRING',
    'boolean': 'BOOLEAN',
    'int': 'INTEGER',
    'long': 'INTEGER',
    'float': 'FLOAT',
    'double': 'FLOAT',
    'bytes': 'BYTES',
}
_LOGICAL_TO_BQ = {
    'timestamp-micros': 'TIMESTAMP',
    'timestamp-millis': 'TIMESTAMP',
    'date': 'DATE',
    'decimal': 'NUMERIC',
}


def _bq_field(field: dict) -> dict:
  avro_type = field['type']
  mode = 'REQUIRED'
  if isinstance(avro_type, list):
    non_null = [t for t in avro_type if t != 'null']
    if len(non_null) != 1 or len(avro_type) != 2:
      raise ValueError(f'field {field["name"]}: only ["null", T] unions map to BigQuery')
    avro_type, mode = non_null[0], 'NULLABLE'
  if isinstance(avro_type, dict) and avro_type.get('type') == 'array':
    avro_type, mode = avro_type['items'], 'REPEATED'
  out: dict = {'name': field['name'], 'mode': mode}
  if isinstance(avro_type, dict) and avro_type.get('type') == 'record':
    out['type'] = 'RECORD'
    out['fields'] = [_bq_field(f) for f in avro_type['fields']]
  elif isinstance(avro_type, dict) and avro_type.get('logicalType') in _LOGICAL_TO_BQ:
    out['type'] = _LOGICAL_TO_BQ[avro_type['logicalType']]
  else:
    base = avro_type['type'] if isinstance(avro_type, dict) else avro_type
    if base not in _AVRO_TO_BQ:
      raise ValueError(f'field {field["name"]}: Avro type {base!r} has no BigQuery mapping')
    out['type'] = field.get('sqlType', _AVRO_TO_BQ[base])
  if field.get('doc'):
    out['description'] = field['doc']
  return out


@functools.cache
def bigquery_fields(name: str) -> tuple[dict, ...]:
  """BigQuery schema fields (REST API representation) of record `name`."""
  return tuple(_bq_field(f) for f in avro_schema(name)['fields'])


def bigquery_schema(name: str) -> dict:
  """`{'fields': [...]}`: the form Beam's WriteToBigQuery and the REST API take."""
  return {'fields': [dict(f) for f in bigquery_fields(name)]}


def table_id(name: str) -> str:
  return avro_schema(name)['bigquery']['table']


def time_partitioning(name: str) -> dict:
  """`{'type': 'DAY', 'field': ...}` for the table of record `name`."""
  return dict(avro_schema(name)['bigquery']['time_partitioning'])


def clustering_fields(name: str) -> list[str]:
  return list(avro_schema(name)['bigquery'].get('clustering', []))


@functools.cache
def _row_converters(name: str, json_as_text: bool = True
                    ) -> tuple[tuple[str, Callable[[Any], Any] | None], ...]:
  convs = []
  for field in bigquery_fields(name):
    if field['type'] == 'TIMESTAMP':
      convs.append((field['name'], micros_to_rfc3339))
    elif field['type'] == 'JSON':
      convs.append((field['name'], _json_text if json_as_text else None))
    elif field['type'] == 'NUMERIC':
      convs.append((field['name'], str))  # Decimal -> exact text; BigQuery parses it exactly
    else:
      convs.append((field['name'], None))
  return tuple(convs)


def to_bigquery_row(name: str, record: dict) -> dict:
  """The JSON row BigQuery's insertAll and NDJSON loads take, from an in-pipeline record.

  In the pipeline timestamps are integer microseconds since the epoch (as in Avro), NUMERIC
  columns hold Decimals and JSON columns Python objects; BigQuery wants RFC 3339 strings, decimal
  text and JSON text.
  """
  return _convert(name, record, json_as_text=True)


def to_json_message(name: str, record: dict) -> dict:
  """A record as a JSON message body (Pub/Sub): like `to_bigquery_row`, but JSON columns stay
  nested objects."""
  return _convert(name, record, json_as_text=False)


def _convert(name: str, record: dict, json_as_text: bool) -> dict:
  row = {}
  for field_name, convert in _row_converters(name, json_as_text):
    value = record.get(field_name)
    row[field_name] = value if value is None or convert is None else convert(value)
  return row


@functools.cache
def _decimal_fields(name: str) -> tuple[str, ...]:
  """Top-level fields of record `name` that hold Decimals (Avro decimal logical type)."""
  found = []
  for field in avro_schema(name)['fields']:
    branches = field['type'] if isinstance(field['type'], list) else [field['type']]
    if any(isinstance(b, dict) and b.get('logicalType') == 'decimal' for b in branches):
      found.append(field['name'])
  return tuple(found)


def encode_record(name: str, record: dict) -> bytes:
  """An in-pipeline record of `name` as compact bytes, for the shuffles of a Beam graph.

  orjson rather than Beam's default coder for dicts (FastPrimitivesCoder), which costs several
  times more per event (docs/PERFORMANCE.md, "Events travel as orjson bytes"). The batch graph
  encodes events for its dedupe and cut-down events (`profile.fold_input`) for its group by
  customer.
  Decimal fields travel as exact text; `decode_record` restores them. Nested values must be JSON
  types (they come from parsed JSON).
  """
  decimals = _decimal_fields(name)
  if any(record.get(field) is not None for field in decimals):
    record = dict(record)
    for field in decimals:
      value = record.get(field)
      if value is not None:
        record[field] = str(value)
  return orjson.dumps(record)


def decode_record(name: str, data: bytes) -> dict:
  """The inverse of `encode_record`."""
  record = orjson.loads(data)
  for field in _decimal_fields(name):
    value = record.get(field)
    if value is not None:
      record[field] = _decimal.Decimal(value)
  return record


def micros_to_rfc3339(micros: int) -> str:
  return (_EPOCH + _dt.timedelta(microseconds=micros)).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


def datetime_to_micros(value: _dt.datetime) -> int:
  if value.tzinfo is None:
    value = value.replace(tzinfo=_dt.timezone.utc)
  return (value - _EPOCH) // _dt.timedelta(microseconds=1)


def micros_to_datetime(micros: int) -> _dt.datetime:
  return _EPOCH + _dt.timedelta(microseconds=micros)


def _json_text(value: Any) -> str:
  return value if isinstance(value, str) else orjson.dumps(value).decode()
