"""Tracked opens and clicks: what a hit on `/v1/o/{token}.gif` or `/v1/c/{token}` becomes.

The token (transforms/rules/tracking.py) says whose email, which campaign and email, and where a
click goes; the request says whether a machine made it (transforms/rules/machine.py). A valid hit
becomes a Segment Email-spec track event, `Email Opened` or `Email Link Clicked`, published like
any other; an invalid token publishes nothing, and a click with one goes to the landing URL.
docs/ENGAGEMENT.md is the reference.
"""
from __future__ import annotations

import threading
import urllib.parse
from typing import Mapping

import cachetools

from transforms.rules import machine
from transforms.rules.tracking import Link

OPENED = 'Email Opened'
CLICKED = 'Email Link Clicked'
# A user agent longer than this is cut: nothing real sends more, and the event stays far inside
# the 32 KB limit whatever a client sends.
MAX_USER_AGENT_CHARS = 512
# First opens remembered for the fast-click rule (one entry per email opened within the window).
MAX_FIRST_OPENS = 200_000
# Characters a Location header carries as they are: printable ASCII but space. Anything else
# (an IRI's letters) is percent-encoded; '%' itself stays, so an encoded URL is not re-encoded.
_LOCATION_SAFE = ''.join(chr(c) for c in range(0x21, 0x7f))


def event(link: Link, kind: str, reason: str | None, headers: Mapping[str, str],
          timestamp: str) -> dict:
  """The Segment track event of a valid hit (`kind` 'open' or 'click') at `timestamp` (the
  receive time, ISO-8601); the collector then stamps it like any other (messageId, receivedAt,
  context.ip: collector.events.encode)."""
  properties = {'email_id': link.email_id, 'campaign_id': link.campaign_id,
                'machine': reason is not None, 'machine_reason': reason}
  if kind == 'click':
    properties['link_url'] = link.url
  context = {}
  agent = headers.get('user-agent')
  if agent:
    context['userAgent'] = agent[:MAX_USER_AGENT_CHARS]
  return {'type': 'track', 'event': OPENED if kind == 'open' else CLICKED,
          'userId': link.customer_id, 'timestamp': timestamp, 'properties': properties, 'context': context}


def location(url: str) -> bytes:
  """A URL (already checked by transforms.rules.tracking.safe_url) as a Location header value."""
  return urllib.parse.quote(url, safe=_LOCATION_SAFE).encode('ascii')


class FirstOpens:
  """When each email was first opened, for the fast-click rule: kept `seconds` after the open (a
  later click is past the window anyway), at most MAX_FIRST_OPENS emails (the oldest go first).
  In-process: with several collector instances a click may land on another instance than its
  open, and then only the send-time half of the rule applies (docs/ENGAGEMENT.md)."""

  def __init__(self, seconds: float, maxsize: int = MAX_FIRST_OPENS):
    self._seconds = seconds
    self._cache = cachetools.TTLCache(maxsize, max(seconds, 0.001)) if seconds > 0 else None
    self._lock = threading.Lock()

  def opened(self, link: Link, at: float) -> None:
    if self._cache is None:
      return
    key = (link.customer_id, link.campaign_id, link.email_id)
    with self._lock:
      if key not in self._cache:
        self._cache[key] = at

  def first(self, link: Link) -> float | None:
    if self._cache is None:
      return None
    with self._lock:
      return self._cache.get((link.customer_id, link.campaign_id, link.email_id))


def machine_reason(link: Link, kind: str, method: str, headers: Mapping[str, str],
                   ip: str | None, at: float, first_open: float | None,
                   fast_click_seconds: float) -> str | None:
  return machine.machine_reason(
      machine.Hit(kind, method, headers, ip, at, link.issued_at, first_open), fast_click_seconds)
