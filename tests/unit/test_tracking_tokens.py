"""Signed tracking tokens (transforms/rules/tracking.py): signing, tampering, expiry, key
rotation, and what a click may redirect to."""
import base64
import string

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.rules import tracking
from transforms.rules.tracking import InvalidToken, Link, TokenKeys

OLD = 'k2026a:' + 'o' * 32
NEW = 'k2026b:' + 'n' * 40
LINK = Link('cust-1', 'spring-sale', 'email-7', 'https://shop.example.com/p/42?utm=email', 1000,
            2000)
PIXEL = Link('cust-1', 'spring-sale', 'email-7', None, 1000, 2000)


def reason(keys: TokenKeys, token, now=1500) -> str:
  with pytest.raises(InvalidToken) as refused:
    keys.verify(token, now)
  return refused.value.reason


def test_a_signed_token_verifies_to_its_link():
  keys = TokenKeys.parse(NEW)
  assert keys.verify(keys.sign(LINK), 1500) == LINK
  assert keys.verify(keys.sign(PIXEL), 1999) == PIXEL
  token = keys.sign(LINK)
  assert token.split('.')[0] == 'k2026b' and set(token) <= set(string.ascii_letters
                                                                + string.digits + '-_.')


def test_expiry_is_exclusive():
  keys = TokenKeys.parse(NEW)
  token = keys.sign(LINK)
  assert keys.verify(token, 1999.999) == LINK
  assert reason(keys, token, 2000) == tracking.EXPIRED
  assert reason(keys, token, 10**10) == tracking.EXPIRED


def test_every_altered_character_is_refused():
  keys = TokenKeys.parse(NEW)
  token = keys.sign(LINK)
  for i, char in enumerate(token):
    for replacement in ('A', '_', '.'):
      if replacement == char:
        continue
      altered = token[:i] + replacement + token[i + 1:]
      with pytest.raises(InvalidToken):
        keys.verify(altered, 1500)


def test_a_payload_swapped_in_from_another_token_is_refused():
  keys = TokenKeys.parse(NEW)
  kid, _, signature = keys.sign(LINK).split('.')
  other = keys.sign(Link('cust-2', 'spring-sale', 'email-7', 'https://evil.example/', 1000, 2000))
  assert reason(keys, f'{kid}.{other.split(".")[1]}.{signature}') == tracking.BAD_SIGNATURE


def test_a_forged_payload_with_a_guessed_signature_is_refused():
  keys = TokenKeys.parse(NEW)
  payload = base64.urlsafe_b64encode(orjson.dumps(
      [1, 'cust-1', 'c', 'e', 'https://evil.example/', 0, 10**12])).rstrip(b'=').decode()
  assert reason(keys, f'k2026b.{payload}.{"A" * 43}') == tracking.BAD_SIGNATURE
  assert reason(keys, f'nokey.{payload}.{"A" * 43}') == tracking.UNKNOWN_KEY


def test_rotation_old_tokens_verify_while_the_old_key_is_in_the_ring():
  before = TokenKeys.parse(OLD)
  during = TokenKeys.parse(f'{NEW},{OLD}')   # new key first: it signs; the old one verifies
  after = TokenKeys.parse(NEW)
  old_token = before.sign(LINK)
  assert during.signing == 'k2026b'
  assert during.verify(old_token, 1500) == LINK
  assert during.sign(LINK).startswith('k2026b.')
  assert after.verify(during.sign(LINK), 1500) == LINK
  assert reason(after, old_token) == tracking.UNKNOWN_KEY


def test_the_same_key_id_with_another_secret_is_refused():
  theirs = TokenKeys.parse('k2026b:' + 'x' * 40)
  assert reason(TokenKeys.parse(NEW), theirs.sign(LINK)) == tracking.BAD_SIGNATURE


@pytest.mark.parametrize('text, message', [
    ('', 'no key given'),
    ('k1', 'is not key_id:secret'),
    ('k1:short', 'at least 32'),
    ('bad id!:' + 'x' * 32, 'is not key_id:secret'),
    (f'k1:{"a" * 32},k1:{"b" * 32}', 'appears twice'),
])
def test_bad_key_settings_say_what_is_wrong(text, message):
  with pytest.raises(tracking.KeyRingError, match=message):
    TokenKeys.parse(text)


def test_the_key_ring_never_shows_its_secrets():
  keys = TokenKeys.parse(NEW)
  assert 'n' * 40 not in repr(keys) and 'n' * 40 not in str(keys)


@pytest.mark.parametrize('url', [
    'javascript:alert(1)', '//evil.example/', '/relative', 'ftp://host/f', 'https://',
    'https://host/a b', 'https://host/\r\nSet-Cookie: x', 'https://host/\\evil', 'data:text/html,x',
    'https://host/' + 'a' * 2048, '', None])
def test_only_absolute_http_urls_may_be_signed_or_followed(url):
  assert not tracking.safe_url(url)
  if url is not None:
    with pytest.raises(ValueError):
      TokenKeys.parse(NEW).sign(Link('c', 'k', 'e', url, 0, 1))


def test_a_signed_unsafe_url_is_refused_at_verification():
  """Even a correctly signed token never redirects to an unsafe URL (a signing bug elsewhere)."""
  keys = TokenKeys.parse(NEW)
  payload = base64.urlsafe_b64encode(orjson.dumps(
      [1, 'c', 'k', 'e', 'javascript:alert(1)', 0, 10**12])).rstrip(b'=').decode()
  signed = f'k2026b.{payload}'
  signature = base64.urlsafe_b64encode(tracking._mac(b'n' * 40, signed)).rstrip(b'=').decode()
  assert reason(keys, f'{signed}.{signature}') == tracking.UNSAFE_URL


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(
    lambda b: base64.urlsafe_b64encode(b).decode().rstrip('=')), st.builds(
        lambda a, b, c: f'{a}.{b}.{c}', st.text(max_size=20), st.text(max_size=80),
        st.text(max_size=50))))
def test_no_token_but_a_signed_one_yields_a_link(token):
  """Redirect safety: any string that is not a token we signed is refused with a reason (the
  collector then sends the click to its landing URL), and never raises anything else."""
  keys = TokenKeys.parse(NEW)
  with pytest.raises(InvalidToken) as refused:
    keys.verify(token, 1500)
  assert refused.value.reason in (tracking.MALFORMED, tracking.UNKNOWN_KEY,
                                  tracking.BAD_SIGNATURE)


def test_overlong_tokens_are_refused_before_decoding():
  assert reason(TokenKeys.parse(NEW), 'k2026b.' + 'A' * 5000 + '.AAAA') == tracking.MALFORMED
