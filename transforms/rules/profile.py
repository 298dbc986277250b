"""The customer profile as a fold. Pure functions, no Beam.

`new_state(customer_id)` starts a profile, `apply(state, event)` folds one event into it (events
in event-time order), `render(state)` produces the serving document. Batch groups a customer's
events and folds them; streaming will keep the state in a stateful DoFn and fold as events come.
Both run these functions, so a test of a rule is a test of both paths.

First version: last event time and event counts by name.
"""
from __future__ import annotations

import datetime as dt

import schemas

SCHEMA_VERSION = 1


def event_name(event: dict) -> str:
  """The name an event is counted under: the track event name, else the call type."""
  return event['event'] if event['type'] == 'track' and event.get('event') else event['type']


def new_state(customer_id: str) -> dict:
  return {'customer_id': customer_id, 'last_event_at': None, 'event_counts': {}}


def apply(state: dict, event: dict) -> dict:
  """Folds one event into the profile state (updated in place and returned: the fold owns it)."""
  last = state['last_event_at']
  if last is None or event['event_time'] > last:
    state['last_event_at'] = event['event_time']
  counts = state['event_counts']
  name = event_name(event)
  counts[name] = counts.get(name, 0) + 1
  return state


def fold(customer_id: str, events) -> dict:
  """Folds a customer's events in event-time order (ties by message id, so the result does not
  depend on input order)."""
  state = new_state(customer_id)
  for event in sorted(events, key=lambda e: (e['event_time'], e['message_id'])):
    apply(state, event)
  return state


def render(state: dict) -> dict:
  """The serving document (Firestore `customers/{customer_id}`), times as aware datetimes.

  `updated_at` is not set here: the writer stamps it with the commit time.
  """
  last = state['last_event_at']
  return {
      'customer_id': state['customer_id'],
      'schema_version': SCHEMA_VERSION,
      'last_event_at': None if last is None else schemas.micros_to_datetime(last),
      'event_counts': dict(sorted(state['event_counts'].items())),
  }
