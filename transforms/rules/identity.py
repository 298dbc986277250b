"""Identity stitching rules. Pure functions, no Beam.

An event carrying both a userId and an anonymousId links them. Events that carry only an
anonymousId belong to the linked userId. When one anonymousId is linked to several userIds (a
shared device), the earliest link wins, so the result does not depend on input order.
"""
from __future__ import annotations


def link(event: dict) -> tuple[str, tuple[int, str]] | None:
  """(anonymous_id, (event_time, user_id)) for an event that links the two, else None."""
  if event.get('user_id') and event.get('anonymous_id'):
    return event['anonymous_id'], (event['event_time'], event['user_id'])
  return None


def earliest(links) -> tuple[int, str]:
  """The winning link among (event_time, user_id) candidates: the earliest, ties by user id."""
  return min(links)


def customer_of(event: dict, links: dict[str, str]) -> str | None:
  """The customer an event belongs to: its userId, else the userId its anonymousId links to."""
  if event.get('user_id'):
    return event['user_id']
  anonymous_id = event.get('anonymous_id')
  return links.get(anonymous_id) if anonymous_id else None
