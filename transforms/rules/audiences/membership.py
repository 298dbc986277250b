"""Changes of audience membership: the rows of `audience_membership` and the Segment events of
the audience topic (docs/AUDIENCES.md, "Outputs"). Pure, no Beam.

A change is recorded when a render's audiences differ from the customer's previous ones: the
streaming fold keeps the previous set in state, the batch job reads it from the table's latest
change per customer and audience, so a re-run over the same input changes nothing. A customer
whose document is withheld (consent) exits every audience.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

import schemas

ENTERED, EXITED = 'entered', 'exited'
EVENT_NAMES = {ENTERED: 'Audience Entered', EXITED: 'Audience Exited'}


def changes(customer_id: str, previous: Iterable[str], current: Iterable[str],
            changed_at: int) -> list[dict]:
  """`audience_membership` records, sorted by audience, from `previous` to `current`."""
  before, after = set(previous), set(current)
  return [{'customer_id': customer_id, 'audience': audience,
           'change': ENTERED if audience in after else EXITED, 'changed_at': changed_at}
          for audience in sorted(before ^ after)]


def current_members(rows: Iterable[tuple[str, str, int]]) -> dict[str, set[str]]:
  """customer_id -> the audiences whose latest change (by changed_at, then `entered` after
  `exited` at the same time) of `rows` `(audience, change, changed_at)`-per-customer is entered.
  `rows` are `(customer_id, audience, change, changed_at)`."""
  latest: dict[tuple[str, str], tuple[int, bool]] = {}
  for customer_id, audience, change, changed_at in rows:
    key = (customer_id, audience)
    candidate = (changed_at, change == ENTERED)
    if key not in latest or candidate > latest[key]:
      latest[key] = candidate
  members: dict[str, set[str]] = {}
  for (customer_id, audience), (_, entered) in latest.items():
    if entered:
      members.setdefault(customer_id, set()).add(audience)
  return members


def segment_event(change: dict) -> dict:
  """The change as Segment's audience event (a track call `Audience Entered` / `Audience
  Exited` with `{audience_key, <audience_key>: true|false}`), so tools that read Segment's
  audience events take it. Its messageId is derived from the change, so a replay is the same
  event (the trigger worker's idempotency key)."""
  entered = change['change'] == ENTERED
  identity = f"{change['customer_id']}\x00{change['audience']}\x00{change['change']}\x00" \
             f"{change['changed_at']}"
  return {'type': 'track', 'event': EVENT_NAMES[change['change']],
          'userId': change['customer_id'],
          'messageId': 'audience-' + hashlib.sha256(identity.encode()).hexdigest()[:40],
          'timestamp': schemas.micros_to_datetime(change['changed_at']).isoformat().replace(
              '+00:00', 'Z'),
          'properties': {'audience_key': change['audience'], change['audience']: entered}}
