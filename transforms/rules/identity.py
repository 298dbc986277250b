"""Identity stitching rules. Pure functions, no Beam.

An event carrying both a userId and an anonymousId links them; so does an alias, whose
previousId the parser gives as its anonymousId (transforms.rules.events), whether it is an
anonymousId or an earlier userId (two known userIds are not merged: events carrying the earlier
one stay its own). Events that carry only an anonymousId belong to the linked userId. When one
anonymousId is linked to several userIds (a shared device), the earliest link by event time wins
(`wins`), so the result does not depend on input order. Batch applies the rule over the whole
input; streaming applies it to the links seen so far (docs/DATA_CONTRACT.md, "Streaming", says
when the two differ).
"""
from __future__ import annotations


def link(event: dict) -> tuple[str, tuple[int, str]] | None:
  """(anonymous_id, (event_time, user_id)) for an event that links the two, else None."""
  if event.get('user_id') and event.get('anonymous_id'):
    return event['anonymous_id'], (event['event_time'], event['user_id'])
  return None


def wins(candidate: tuple[int, str], current: tuple[int, str] | None) -> bool:
  """The stitching rule: does link `candidate` (event_time, user_id) replace `current`? The
  earliest link by event time wins, ties by user id."""
  return current is None or candidate < current


def customer_of(event: dict, links: dict[str, str]) -> str | None:
  """The customer an event belongs to: its userId, else the userId its anonymousId links to."""
  if event.get('user_id'):
    return event['user_id']
  anonymous_id = event.get('anonymous_id')
  return links.get(anonymous_id) if anonymous_id else None
