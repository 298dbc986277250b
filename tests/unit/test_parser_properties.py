"""Property-based tests: whatever arrives, the parser never raises and every input ends up either
a valid event record or a rejection with a known failure type."""
import datetime as dt
import json

import orjson
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

import schemas
from transforms.rules import events
from transforms.rules.dead_letters import Rejection, dead_letter

FAILURE_TYPES = {events.INVALID_JSON, events.SCHEMA_VIOLATION, events.SIZE_VIOLATION,
                 events.UNSUPPORTED_TYPE}
EVENT_FIELDS = {f['name'] for f in schemas.avro_schema('events')['fields']}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children,
                                                                       max_size=4),
    max_leaves=20)

# Mostly plausible times, sometimes any time at all (year 1 to 9999).
times = st.one_of(st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2098, 1, 1)),
                  st.datetimes())

# Events that are close to valid, so the deeper rules (times, money, ids) are exercised too.
near_events = st.fixed_dictionaries(
    {'type': st.sampled_from(['track', 'identify', 'page'] * 3
                             + ['screen', 'group', 'alias', 'Screen', '', None]),
     'messageId': st.one_of(st.text(min_size=1, max_size=8), st.text(max_size=8), st.integers(),
                            st.none())},
    optional={
        'userId': st.one_of(st.text(max_size=8), st.none(), st.integers()),
        'anonymousId': st.one_of(st.text(max_size=8), st.none()),
        'previousId': st.one_of(st.text(max_size=8), st.none(), st.integers()),
        'groupId': st.one_of(st.text(max_size=8), st.none(), st.integers()),
        'name': st.one_of(st.text(max_size=12), st.none()),
        'event': st.one_of(st.text(max_size=12), st.none()),
        'timestamp': st.one_of(
            times.map(lambda d: d.isoformat()), st.text(max_size=30), st.integers()),
        'sentAt': times.map(lambda d: d.isoformat() + 'Z'),
        'receivedAt': times.map(lambda d: d.isoformat()),
        'originalTimestamp': times.map(lambda d: d.isoformat()),
        'properties': st.one_of(json_values, st.fixed_dictionaries({}, optional={
            'price': json_values, 'quantity': json_values, 'total': json_values,
            'currency': json_values, 'product_id': json_values, 'order_id': json_values,
            'email': st.emails(), 'products': json_values})),
        'traits': st.one_of(json_values, st.fixed_dictionaries({'email': st.emails()})),
        'context': json_values,
    })


def check(payload):
  result = events.parse_event(payload, 'file:prop', 1)
  if isinstance(result, Rejection):
    assert result.failure_type in FAILURE_TYPES
    assert result.message
    # A rejection always makes a dead letter whose payload is kept.
    record = dead_letter(result.failure_type, result.message, 'ParseEvents', payload, 'file:prop', 1)
    assert record['payload_encoding'] in ('utf-8', 'base64')
    return result
  assert set(result) == EVENT_FIELDS
  assert isinstance(result['message_id'], str) and result['message_id']
  assert result['user_id'] or result['anonymous_id']
  assert isinstance(result['event_time'], int)
  assert result['quantity'] is None or result['quantity'] >= 1
  # Email fields are removed wherever the parser looks for them (and hashed); a group's traits
  # are the group's, not the customer's: the address stays, replaced by its token.
  context = result['context'] if isinstance(result['context'], dict) else {}
  traits = result['traits'] if result['type'] != 'group' else None
  for holder in (result['properties'], traits, context.get('traits')):
    assert not (isinstance(holder, dict) and 'email' in holder)
  if result['type'] == 'group':
    assert isinstance(result['group_id'], str) and result['group_id']
  if result['type'] == 'alias':
    assert result['user_id'] and result['anonymous_id']
  orjson.dumps(schemas.to_bigquery_row('events', result))  # always serialisable for BigQuery
  return result


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(payload):
  check(payload)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_never_raises(value):
  check(json.dumps(value).encode())


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(near_events)
def test_near_valid_events_are_valid_or_rejected_never_raise(value):
  check(json.dumps(value).encode())


def test_the_near_valid_strategy_reaches_valid_events_too():
  # Otherwise the property above would only ever exercise rejections. About 1 in 430 near-valid
  # events is valid, and Hypothesis mixes constants from the loaded modules into what it
  # generates, so even a derandomized search depends on what the suite imported first: 2,000
  # examples found none in one full run (a 1% chance). `find` stops at the first it finds.
  found = find(near_events, lambda v: isinstance(
      events.parse_event(json.dumps(v).encode(), 's', 1), dict),
               settings=settings(max_examples=20_000, database=None, derandomize=True))
  assert found['type'] in schemas.supported_event_types()
