"""CEL expressions of audience and trait definitions (transforms/rules/audiences/expressions.py)."""
import decimal
import pickle

import pytest

import schemas
from transforms.rules.audiences import expressions as x

T = 1_763_000_000_000_000


def event(name='Product Viewed', type_='track', properties=None, **fields):
  return {'type': type_, 'event': name, 'properties': properties or {}, 'event_time': T,
          'product_id': None, 'price': None, 'traits': None, **fields}


def where(source, record, name=None, product=None):
  return x.compile_event(source).test(
      x.event_activation(record, name or record['event'], product))


def test_the_issues_filter_holds_for_int_and_double_prices():
  games = 'product.category == "Games" && properties.price < 5'
  for price in (3, 3.5, decimal.Decimal('4.99')):
    record = event(properties={'category': 'Games', 'price': price})
    assert where(games, record), price
  assert not where(games, event(properties={'category': 'Games', 'price': 5}))
  assert not where(games, event(properties={'category': 'Books', 'price': 1}))


def test_absent_and_null_fields_make_a_comparison_false_not_an_error():
  for properties in ({}, {'price': None}, {'price': 'cheap'}, {'price': [1]}):
    assert not where('properties.price < 5', event(properties=properties))
    assert not where('properties.price >= 5', event(properties=properties))
  assert where('!has(properties.price)', event())
  assert not where('has(properties.price)', event())
  # An error on one side of || does not hide a true other side (CEL's commutative logic).
  assert where('properties.price < 5 || name == "Product Viewed"', event())


def test_product_is_the_catalog_product_else_the_events_own_fields():
  record = event(properties={'category': 'Shoes', 'name': 'Old name'}, product_id='p1',
                 price=decimal.Decimal('9.50'))
  assert where('product.category == "Shoes" && product.price == 9.5', record)
  assert where('product.product_id == "p1"', record)
  catalog = {'product_id': 'p1', 'name': 'Boot', 'category': 'Boots', 'brand': 'B',
             'price': 120.0, 'in_stock': True, 'currency': 'USD'}
  assert where('product.category == "Boots" && product.in_stock && product.brand == "B"',
               record, product=catalog)


def test_type_name_traits_and_timestamp():
  identify = event(None, 'identify', traits={'plan': 'pro'})
  assert where('type == "identify" && name == "identify" && traits.plan == "pro"', identify,
               name='identify')
  assert where('type == "track" && properties.type == "gift"',
               event(properties={'type': 'gift'}))
  assert where('type(1) == int && "type" != type', event())
  assert where('timestamp == timestamp("2025-11-13T02:13:20Z")', event())
  assert schemas.micros_to_datetime(T).isoformat() == '2025-11-13T02:13:20+00:00'


def test_values_come_back_as_plain_python_and_errors_as_none():
  value = x.compile_event('properties.total')
  assert value.value(x.event_activation(event(properties={'total': 12.5}), 'x')) == 12.5
  assert value.value(x.event_activation(event(properties={'total': 'abc'}), 'x')) == 'abc'
  assert value.value(x.event_activation(event(), 'x')) is None
  assert x.compile_event('properties.tags').value(
      x.event_activation(event(properties={'tags': ['a', 'b']}), 'x')) == ['a', 'b']


def test_document_expressions_see_served_fields_and_traits():
  when = x.compile_document('traits.games_views_7d >= 3 && orders.count == 0')
  document = {'orders': {'count': 0, 'lifetime_value': 0.0}, 'segment': 'prospect'}
  assert when.test(x.document_activation(document, {'games_views_7d': 3}))
  assert when.test(x.document_activation(document, {'games_views_7d': 3.0}))
  assert not when.test(x.document_activation(document, {'games_views_7d': 2}))
  assert not when.test(x.document_activation(document, {}))  # an absent trait: false
  assert x.compile_document('cart.value > 100 && cart.abandoned').test(
      x.document_activation({'cart': {'value': 120.5, 'abandoned': True}}, {}))
  assert x.compile_document('loyalty_tier == null').test(x.document_activation({}, {}))
  assert set(x.document_variables()) >= {'segment', 'orders', 'cart', 'engagement',
                                          'loyalty_tier', 'country', 'language',
                                          'recently_viewed', 'holdout', 'traits'}


def test_a_non_boolean_result_is_false():
  assert not where('properties.count', event(properties={'count': 3}))
  assert not where('"yes"', event())


@pytest.mark.parametrize('source, message, line, column', [
    ('product.category == ', 'Syntax error', 1, 21),
    ('foo == 1', "undeclared reference to 'foo'", 1, 1),
    ('type == "a" && bar', "undeclared reference to 'bar'", 1, 16),
    ('type == type == && 1', 'Syntax error', 1, 17),
    ('name == "a"\n  && nope', "undeclared reference to 'nope'", 2, 6),
    ('"x" + 1', "no matching overload for '_+_'", 1, 5),
])
def test_compile_errors_say_what_and_where_in_the_source_as_written(source, message, line,
                                                                    column):
  with pytest.raises(x.ExpressionError) as err:
    x.compile_event(source)
  assert message in err.value.message and 'type_' not in err.value.message
  assert (err.value.line, err.value.column) == (line, column)


@pytest.mark.parametrize('source', ['', '   ', None, 3, 'a' * 5000])
def test_empty_or_oversized_expressions_are_refused(source):
  with pytest.raises(x.ExpressionError):
    x.compile_event(source)


def test_compiled_expressions_pickle_by_compiling_again():
  compiled = x.compile_document('traits.spend_90d > 100')
  again = pickle.loads(pickle.dumps(compiled))
  assert again.source == compiled.source and again.variables == compiled.variables
  assert again.test(x.document_activation({}, {'spend_90d': 150}))


def test_document_times_are_cel_timestamps():
  document = {'last_event_at': schemas.micros_to_datetime(T),
              'cart': {'updated_at': schemas.micros_to_datetime(T), 'value': 1.0}}
  assert x.compile_document(
      'last_event_at > timestamp("2025-01-01T00:00:00Z") && '
      'cart.updated_at == timestamp("2025-11-13T02:13:20Z")').test(
          x.document_activation(document, {}))
