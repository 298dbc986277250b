"""The audience member listing's pure parts: key and limit checks, the cursor, a page."""
import pytest
from hypothesis import given, strategies as st

from connector import audiences, shaping
from transforms.rules.audiences import definitions


def test_the_key_rule_is_the_pipelines():
  assert audiences.KEY_PATTERN.pattern == definitions.KEY_PATTERN.pattern


@pytest.mark.parametrize('key', ['a', 'games_fans', 'vip2', 'a' + 'b' * 62, 'x_'])
def test_good_keys(key):
  audiences.check_key(key)


@pytest.mark.parametrize('key', [
    '', 'A', 'Games', '1abc', '_a', 'a-b', 'a.b', 'a b', 'a' * 64, 'games\n', 'gämes', '..',
    'a/b', 'a\x00'])
def test_bad_keys_are_refused(key):
  with pytest.raises(shaping.BadRequest, match='audience key'):
    audiences.check_key(key)


@pytest.mark.parametrize('raw, limit', [
    (None, 100), ('1', 1), ('100', 100), ('1000', 1000), ('007', 7)])
def test_limits(raw, limit):
  assert audiences.parse_limit(raw) == limit


@pytest.mark.parametrize('raw', [
    '', '0', '1001', '-1', '+5', ' 5', '5 ', '1e2', '2.0', 'abc', '\u0665', '9' * 40, '0x10'])
def test_bad_limits_are_refused(raw):
  with pytest.raises(shaping.BadRequest, match='1 to 1000'):
    audiences.parse_limit(raw)


@pytest.mark.parametrize('customer_id', ['c1', 'cust-0042', 'zoë-ü 🦄', 'a' * 256, '\u4e2d' * 256,
                                         '\U0001f984' * 256])
def test_a_cursor_decodes_to_the_id_it_encodes(customer_id):
  cursor = audiences.encode_cursor(customer_id)
  assert set(cursor) <= set('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_')
  assert len(cursor) <= audiences.MAX_CURSOR_LENGTH
  assert audiences.decode_cursor(cursor) == customer_id


@given(st.text(min_size=1, max_size=shaping.MAX_ID_LENGTH))
def test_every_valid_id_round_trips_and_every_other_text_is_refused(text):
  try:
    shaping.check_customer_id(text)
  except shaping.BadRequest:
    with pytest.raises(shaping.BadRequest):
      audiences.decode_cursor(audiences.encode_cursor(text))
  else:
    assert audiences.decode_cursor(audiences.encode_cursor(text)) == text


def test_no_cursor_is_the_first_page():
  assert audiences.decode_cursor(None) is None


@pytest.mark.parametrize('raw', [
    '',                                          # an echoed missing next_cursor
    'null', 'None',                              # not base64url of UTF-8
    'YzE=',                                      # padded: not the one encoding of 'c1'
    'YzE\n',                                     # a trailing newline ('YzE' is 'c1')
    'Yz E', 'Yz+E', 'Yz/E', 'YzE.',              # outside the alphabet
    'YzF',                                       # non-zero padding bits: decodes, re-encodes differently
    'Y',                                         # a length no base64 has
    audiences.encode_cursor('a/b'), audiences.encode_cursor('..'),
    audiences.encode_cursor('__name__'), audiences.encode_cursor('c\n1'),
    audiences.encode_cursor('a' * 257),
    'A' * (audiences.MAX_CURSOR_LENGTH + 4),
    '_-8',                                       # bytes that are not UTF-8
])
def test_bad_cursors_are_refused(raw):
  with pytest.raises(shaping.BadRequest, match='cursor'):
    audiences.decode_cursor(raw)


def test_a_page_says_whether_another_follows():
  assert audiences.page('vip', ['a', 'b', 'c'], 2) == {
      'audience': 'vip', 'members': ['a', 'b'], 'next_cursor': audiences.encode_cursor('b')}
  # Exactly a page left: the last page says so, no empty page after it.
  assert audiences.page('vip', ['a', 'b'], 2) == {
      'audience': 'vip', 'members': ['a', 'b'], 'next_cursor': None}
  assert audiences.page('vip', [], 2) == {'audience': 'vip', 'members': [], 'next_cursor': None}
