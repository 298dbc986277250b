"""transforms/line_formats.py: each line format decodes to what was encoded, holds no raw newline
(chunks join lines with newlines), and keeps its exact bytes (the shuffles and the benchmark's
outputs depend on them)."""
import decimal

import pytest

import schemas
from transforms import line_formats

# Keys and values a line must survive: tabs, newlines, quotes, non-ASCII, an empty string.
AWKWARD = ['c1', 'has\ttab', 'has\nnewline', 'quote"and\\backslash', 'Zoë-😀', '']


@pytest.mark.parametrize('message_id', AWKWARD)
def test_copy_lines_round_trip(message_id):
  record = schemas.encode_record('events', {'message_id': message_id, 'note': 'a\tb\nc'})
  for preference in ((7, 5, 'file:a'), (None, 5, 'pubsub'), (5, 5, 'file:\t')):
    line = line_formats.encode_copy(message_id, preference, record)
    assert b'\n' not in line
    assert line_formats.decode_copy(line) == (message_id, preference, record)


def test_copy_lines_keep_their_bytes():
  assert line_formats.encode_copy('m1', (7, 5, 'file:a'), b'{"x":1}') == \
      b'["m1",7,5,"file:a"]\t{"x":1}'


@pytest.mark.parametrize('key', AWKWARD)
def test_fold_lines_round_trip(key):
  record = schemas.encode_record('events', {'message_id': 'm\t1', 'total': decimal.Decimal('1.10')})
  for products in ([], ['p1'], ['p\t2', 'p\n3', 'Zoë']):
    line = line_formats.encode_fold(key, products, record)
    assert b'\n' not in line
    assert line_formats.decode_fold(line) == (key, products, record)


def test_fold_lines_keep_their_bytes():
  assert line_formats.encode_fold('c1', ['p1', 'p2'], b'{"x":1}') == \
      b'"c1"\t["p1","p2"]\t{"x":1}'
  assert line_formats.encode_fold('a\t1', [], b'{}') == b'"a\\t1"\t[]\t{}'


@pytest.mark.parametrize('anonymous_id', AWKWARD)
def test_link_lines_round_trip(anonymous_id):
  for candidate in ((1_793_613_600_000_000, 'c1'), (0, 'user\twith tab'), (-5, '')):
    line = line_formats.encode_link(anonymous_id, candidate)
    assert b'\n' not in line
    assert line_formats.decode_link(line) == (anonymous_id, candidate)


def test_link_lines_keep_their_bytes():
  assert line_formats.encode_link('a1', (10, 'c1')) == b'["a1",10,"c1"]'


@pytest.mark.parametrize('customer', AWKWARD)
def test_partial_lines_round_trip(customer):
  hour = 1_793_613_600_000_000
  for key, totals in (((customer, True, 'Product Viewed', None), (3, None)),
                      ((customer, False, 'Order\tCompleted', 'USD'), (1, decimal.Decimal('10.30'))),
                      ((customer, True, 'Order Completed', 'EUR'), (2, decimal.Decimal('-0.001')))):
    line = line_formats.encode_partial((hour, key), totals)
    assert b'\n' not in line
    slot, decoded = line_formats.decode_partial(line)
    assert slot == (hour, key) and decoded == totals
    assert decoded[1] is None or isinstance(decoded[1], decimal.Decimal)
    assert str(decoded[1]) == str(totals[1])  # the exact decimal text, trailing zeros kept


def test_partial_lines_keep_their_bytes():
  assert line_formats.encode_partial((3600, ('c1', True, 'Order Completed', 'USD')),
                                     (2, decimal.Decimal('10.30'))) == \
      b'[3600,"c1",true,"Order Completed","USD",2,"10.30"]'
