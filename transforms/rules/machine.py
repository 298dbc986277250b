"""Which tracking hits a machine made, not a person (docs/ENGAGEMENT.md). Pure, no I/O.

Mail clients and security gateways fetch images and follow links on their own: Apple Mail Privacy
Protection loads every image of every message through Apple's proxy at delivery, Gmail and Yahoo
fetch images through their caching proxies (once, whoever reads), and link scanners (Microsoft
Defender Safe Links, Mimecast, Proofpoint, Barracuda) follow every link before the reader sees
the message. Such hits are kept as events with `machine: true`, and never move the profile's
engagement. `machine_reason` gives the first rule that matches, or None for a human hit.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Mapping

# Reasons, in the order the rules are tried (the `machine_reason` property of the event).
HEAD = 'head_request'
PREFETCH = 'prefetch'
APPLE_PRIVACY = 'apple_mail_privacy'
IMAGE_PROXY = 'image_proxy'
SCANNER = 'link_scanner'
FAST_CLICK = 'fast_click'

# Image proxies that fetch on the reader's behalf and cache: their open says nothing about who
# read, or whether anyone did (Gmail: "GoogleImageProxy"; Yahoo: "YahooMailProxy"; Outlook.com and
# Microsoft 365: "OutlookImageProxy" / "ms-office ... Office Image Proxy"; Proton: "ProtonMail").
_IMAGE_PROXY = re.compile(
    r'GoogleImageProxy|ggpht\.com|YahooMailProxy|OutlookImageProxy|Office Image Proxy|'
    r'ProtonMail|Superhuman|Front/.*ImageProxy', re.IGNORECASE)
# Link scanners and preview fetchers, and HTTP libraries nobody reads mail with.
_SCANNER = re.compile(
    r'bot\b|bot/|crawler|spider|scanner|preview|Barracuda|Mimecast|Proofpoint|SafeLinks|'
    r'Microsoft Office Protocol Discovery|Symantec|Forcepoint|Trend ?Micro|Sophos|Cisco|'
    r'HeadlessChrome|PhantomJS|python-requests|python-urllib|aiohttp|Go-http-client|'
    r'curl/|Wget/|libwww-perl|okhttp|Java/|Apache-HttpClient|node-fetch|axios/', re.IGNORECASE)
# Apple's Mail Privacy Protection proxy: it announces itself as a bare "Mozilla/5.0", from
# Apple's own 17.0.0.0/8 (Apple documents its relay egress ranges; 17/8 is Apple's block).
_APPLE_UA = 'Mozilla/5.0'
_APPLE_NETWORKS = (ipaddress.ip_network('17.0.0.0/8'),)
# Request headers a browser or proxy sets on a speculative fetch nobody asked to see.
_PREFETCH_HEADERS = ('purpose', 'sec-purpose', 'x-purpose', 'x-moz')
_PREFETCH_VALUES = ('prefetch', 'preview', 'prerender')


@dataclasses.dataclass(frozen=True)
class Hit:
  """One request for a tracking URL. `headers` has lower-case names."""
  kind: str                   # 'open' or 'click'
  method: str                 # 'GET' or 'HEAD'
  headers: Mapping[str, str]
  ip: str | None              # the client address (after trusted proxies)
  at: float                   # epoch seconds
  issued_at: float            # when the token was signed: the send, so about the delivery
  first_open_at: float | None = None  # the first open of this email seen, if any


def machine_reason(hit: Hit, fast_click_seconds: float) -> str | None:
  """The rule that makes `hit` a machine's, or None for a person's."""
  if hit.method == 'HEAD':
    return HEAD
  for name in _PREFETCH_HEADERS:
    value = hit.headers.get(name, '').lower()
    if any(v in value for v in _PREFETCH_VALUES):
      return PREFETCH
  agent = hit.headers.get('user-agent', '').strip()
  if agent == _APPLE_UA or (agent in ('', _APPLE_UA) and _apple(hit.ip)):
    return APPLE_PRIVACY
  if _IMAGE_PROXY.search(agent):
    return IMAGE_PROXY
  if not agent or _SCANNER.search(agent):
    return SCANNER
  if hit.kind == 'click':
    since = [hit.at - t for t in (hit.issued_at, hit.first_open_at) if t is not None]
    if any(0 <= s < fast_click_seconds for s in since):
      return FAST_CLICK
  return None


def _apple(ip: str | None) -> bool:
  if not ip:
    return False
  try:
    address = ipaddress.ip_address(ip)
  except ValueError:
    return False
  return any(address.version == n.version and address in n for n in _APPLE_NETWORKS)
