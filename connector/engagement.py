"""Tracking URLs, the holdout flag and exposure events for a send. Pure functions, no I/O.

An ESP that says which send it renders (`?campaign_id=...&email_id=...`) gets an open pixel URL
and a click URL per product, each carrying a token the collector verifies
(transforms/rules/tracking.py signs and checks them); a customer in the global holdout
(transforms/rules/holdout.py, the pipeline's own rule) gets an `Email Held Out` exposure event
instead of a personalized email (connector/exposures.py publishes it). docs/CONNECTOR.md,
"Tracking, holdout and exposures".
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib

import orjson

from connector import shaping
from transforms.rules.tracking import MAX_ID_CHARS, Link, TokenKeys, safe_url

# The lists of products whose items get a click_url.
LINKED_LISTS = ('recommendations', 'recently_viewed')
EXPOSURE_EVENT = 'Email Held Out'
# The `source` attribute of the exposure messages (transforms/rules/source_tags.py).
SOURCE = 'connector'


@dataclasses.dataclass(frozen=True)
class Send:
  """Which email the ESP renders: its campaign and the email (message) within it."""
  campaign_id: str
  email_id: str


def parse_send(campaign_id: str | None, email_id: str | None) -> Send | None:
  """The query's `campaign_id` and `email_id`: both (a Send) or neither (None); one alone, or a
  value that is not 1 to 256 printable characters, is a BadRequest."""
  if campaign_id is None and email_id is None:
    return None
  if campaign_id is None or email_id is None:
    raise shaping.BadRequest('campaign_id and email_id go together: give both or neither')
  for name, value in (('campaign_id', campaign_id), ('email_id', email_id)):
    if not value or len(value) > MAX_ID_CHARS or not value.isprintable():
      raise shaping.BadRequest(f'{name} must be 1 to {MAX_ID_CHARS} printable characters')
  return Send(campaign_id, email_id)


@dataclasses.dataclass(frozen=True)
class Tracking:
  """Builds tracking URLs: `<base>/v1/o/<token>.gif` (open pixel) and `<base>/v1/c/<token>`
  (click, redirected to the token's URL), tokens valid `ttl_seconds` from signing."""
  keys: TokenKeys = dataclasses.field(repr=False)
  base_url: str
  ttl_seconds: int

  def _token(self, customer_id: str, send: Send, url: str | None, now: int) -> str:
    return self.keys.sign(Link(customer_id, send.campaign_id, send.email_id, url, now,
                               now + self.ttl_seconds))

  def open_pixel(self, customer_id: str, send: Send, now: int) -> str:
    return f'{self.base_url}/v1/o/{self._token(customer_id, send, None, now)}.gif'

  def click_url(self, customer_id: str, send: Send, url, now: int) -> str | None:
    """The tracked link to `url`, or None when `url` is missing or not a safe http(s) URL (the
    collector could not redirect there: the template keeps the item's plain `url`, or none)."""
    if not safe_url(url):
      return None
    return f'{self.base_url}/v1/c/{self._token(customer_id, send, url, now)}'

  def decorate(self, body: dict, customer_id: str, send: Send, now: int) -> dict:
    """`body` (a shaped document) with `tracking.open_pixel` and a `click_url` on every item of
    LINKED_LISTS; the items are copied, never changed in place (they may be cached)."""
    out = dict(body)
    for name in LINKED_LISTS:
      items = out.get(name)
      if isinstance(items, list):
        out[name] = [dict(item, click_url=self.click_url(customer_id, send, item.get('url'), now))
                     if isinstance(item, dict) else item for item in items]
    out['tracking'] = {'open_pixel': self.open_pixel(customer_id, send, now)}
    return out


def exposure_key(campaign_id: str, customer_id: str) -> str:
  """The id of a customer's exposure to a campaign: sha256 hex of the JSON array
  `["<campaign_id>","<customer_id>"]` (the marker document's id; its first 40 characters make
  the event's messageId). JSON, not `campaign:customer`: ids may hold a colon, and campaign `a:b`
  with customer `c` must not be campaign `a` with customer `b:c`."""
  return hashlib.sha256(orjson.dumps([campaign_id, customer_id])).hexdigest()


def exposure_event(customer_id: str, send: Send, now: float) -> dict:
  """The Segment track event that records a held-out customer's exposure to a campaign. The
  messageId depends on campaign and customer only, so a second publish is a duplicate the
  pipeline's dedupe drops."""
  return {
      'type': 'track', 'event': EXPOSURE_EVENT, 'userId': customer_id,
      'messageId': 'held-out-' + exposure_key(send.campaign_id, customer_id)[:40],
      'timestamp': shaping.iso_time(dt.datetime.fromtimestamp(now, dt.timezone.utc)),
      'properties': {'campaign_id': send.campaign_id, 'email_id': send.email_id},
  }


def exposure_message(event: dict) -> tuple[bytes, dict[str, str]]:
  """The Pub/Sub message (data, attributes) of an exposure event."""
  return orjson.dumps(event), {'source': SOURCE}
