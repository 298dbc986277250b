"""Signed tracking tokens for open pixels and click links (docs/ENGAGEMENT.md). Pure, no I/O.

The connector signs a token into each tracking URL it hands an ESP; the collector verifies it when
the pixel is fetched or the link clicked. A token is three dot-separated base64url parts:

    <key id>.<payload>.<signature>

`payload` is the compact JSON array `[1, customer_id, campaign_id, email_id, url, issued_at,
expires_at]` (format version 1; url null for an open pixel; times in epoch seconds) and
`signature` is HMAC-SHA256 under the key named by the key id, over `<key id>.<payload>`.
Verification takes any key of the ring, so a key is rotated by adding a new one first (it signs
from then on) and dropping the old one once its tokens have expired.

Hand-written on the standard library's hmac rather than a token library: itsdangerous and PyJWT
either carry no key id (itsdangerous tries every key) or bring a header and claims format that
only makes the URL longer; the format above is 20 lines to sign and check.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import re
import urllib.parse
from typing import Mapping

import orjson

FORMAT_VERSION = 1
MIN_SECRET_CHARS = 32
# A token longer than this is refused before anything is decoded (a URL inside is at most
# MAX_URL_CHARS; ids at most MAX_ID_CHARS each).
MAX_TOKEN_CHARS = 4096
MAX_URL_CHARS = 2048
MAX_ID_CHARS = 256
_KEY_ID = re.compile(r'[A-Za-z0-9_-]{1,16}')
_B64 = re.compile(r'[A-Za-z0-9_-]+')

# Why a token was refused: the `reason` label of the collector's counter.
MALFORMED = 'malformed'
UNKNOWN_KEY = 'unknown_key'
BAD_SIGNATURE = 'bad_signature'
EXPIRED = 'expired'
UNSAFE_URL = 'unsafe_url'


class InvalidToken(ValueError):
  """A token that must not be trusted: forged, altered, expired, or not a token at all."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


class KeyRingError(ValueError):
  """The tracking keys setting is malformed (the message names the entry)."""


@dataclasses.dataclass(frozen=True)
class Link:
  """What a token says: whose email, which campaign and email, where a click goes (None for an
  open pixel), when it was signed and until when it is honoured (epoch seconds)."""
  customer_id: str
  campaign_id: str
  email_id: str
  url: str | None
  issued_at: int
  expires_at: int


@dataclasses.dataclass(frozen=True)
class TokenKeys:
  """The key ring: key id -> secret; `signing` is the id new tokens are signed with."""
  secrets: Mapping[str, bytes] = dataclasses.field(repr=False)
  signing: str

  @classmethod
  def parse(cls, text: str, where: str = 'tracking keys') -> 'TokenKeys':
    """`kid:secret,kid:secret` -> the ring; the first entry signs. KeyRingError names what is wrong."""
    secrets: dict[str, bytes] = {}
    order = []
    for n, item in enumerate((i.strip() for i in (text or '').split(',')), 1):
      if not item:
        continue
      kid, sep, secret = item.partition(':')
      if not sep or not _KEY_ID.fullmatch(kid):
        raise KeyRingError(f'{where}: entry {n} is not key_id:secret with a key id of 1-16 of '
                        '[A-Za-z0-9_-]')
      if len(secret) < MIN_SECRET_CHARS:
        raise KeyRingError(f'{where}: entry {n} ({kid}): a secret is at least {MIN_SECRET_CHARS} '
                        'characters (e.g. `openssl rand -hex 32`)')
      if kid in secrets:
        raise KeyRingError(f'{where}: key id {kid} appears twice')
      secrets[kid] = secret.encode()
      order.append(kid)
    if not order:
      raise KeyRingError(f'{where}: no key given (key_id:secret, the first one signs)')
    return cls(secrets, order[0])

  def sign(self, link: Link) -> str:
    """The token for `link`, signed with the signing key."""
    for name in ('customer_id', 'campaign_id', 'email_id'):
      value = getattr(link, name)
      if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise ValueError(f'{name} must be 1 to {MAX_ID_CHARS} characters')
    if link.url is not None and not safe_url(link.url):
      raise ValueError('a click URL must be an absolute http(s) URL of at most '
                       f'{MAX_URL_CHARS} characters')
    payload = _b64(orjson.dumps([FORMAT_VERSION, link.customer_id, link.campaign_id,
                                 link.email_id, link.url, int(link.issued_at),
                                 int(link.expires_at)]))
    signed = f'{self.signing}.{payload}'
    return f'{signed}.{_b64(_mac(self.secrets[self.signing], signed))}'

  def verify(self, token: str, now: float) -> Link:
    """The link a token carries, or InvalidToken with the reason. The signature is checked
    (in constant time) before anything in the payload is believed."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
      raise InvalidToken(MALFORMED, 'not a token')
    parts = token.split('.')
    if len(parts) != 3 or not _KEY_ID.fullmatch(parts[0]) or not all(
        _B64.fullmatch(p) for p in parts[1:]):
      raise InvalidToken(MALFORMED, 'not a token')
    kid, payload, signature = parts
    secret = self.secrets.get(kid)
    if secret is None:
      raise InvalidToken(UNKNOWN_KEY, f'key id {kid} is not in the key ring')
    try:
      offered = _unb64(signature)
    except ValueError:
      raise InvalidToken(MALFORMED, 'signature is not base64url') from None
    if not hmac.compare_digest(offered, _mac(secret, f'{kid}.{payload}')):
      raise InvalidToken(BAD_SIGNATURE, 'signature does not match')
    try:
      fields = orjson.loads(_unb64(payload))
      version, customer_id, campaign_id, email_id, url, issued_at, expires_at = fields
    except (ValueError, TypeError):  # signed by us, so only a format change gets here
      raise InvalidToken(MALFORMED, 'payload is not a version 1 token') from None
    if version != FORMAT_VERSION or not all(
        isinstance(v, str) and v for v in (customer_id, campaign_id, email_id)) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in (issued_at, expires_at)):
      raise InvalidToken(MALFORMED, 'payload is not a version 1 token')
    if url is not None and not (isinstance(url, str) and safe_url(url)):
      raise InvalidToken(UNSAFE_URL, 'the link is not an absolute http(s) URL')
    if now >= expires_at:
      raise InvalidToken(EXPIRED, 'token has expired')
    return Link(customer_id, campaign_id, email_id, url, issued_at, expires_at)


def safe_url(url: str) -> bool:
  """Whether a click may redirect to `url`: an absolute http or https URL with a host, at most
  MAX_URL_CHARS, with no whitespace or control characters (no `javascript:`, no `//host`
  scheme-relative trick, no header splitting)."""
  if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
    return False
  if any(ord(c) <= 0x20 or ord(c) == 0x7f or c == '\\' for c in url):
    return False
  try:
    parts = urllib.parse.urlsplit(url)
  except ValueError:
    return False
  return parts.scheme in ('http', 'https') and bool(parts.hostname)


def _mac(secret: bytes, text: str) -> bytes:
  return hmac.new(secret, text.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
  return base64.urlsafe_b64encode(data).rstrip(b'=').decode()


def _unb64(text: str) -> bytes:
  try:
    return base64.urlsafe_b64decode(text + '=' * (-len(text) % 4))
  except (binascii.Error, ValueError) as err:
    raise ValueError(str(err)) from None
