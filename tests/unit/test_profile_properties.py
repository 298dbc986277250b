"""Property-based tests of the profile fold (transforms.rules.profile): whatever valid events a few
customers send, in any order and at any time, folding never raises and the rendered document
keeps its invariants (no negative quantities, values or counts; at most 10 distinct recently
viewed products; exactly the contract's fields).

Events are generated as Segment calls and passed through `parse_event`, keeping the ones it
accepts, so the fold sees exactly what the pipeline would give it.
"""
import datetime as dt
import decimal
import math

import orjson
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

import schemas
from transforms.rules import events, profile

CUSTOMERS = ('c1', 'c2', 'c3')
PRODUCTS = ('p1', 'p2', 'p3', 'p4', 'p5', 'p6', 'p7', 'p8', 'p9', 'p10', 'p11', 'p12', 42)
ORDERS = ('o1', 'o2', 'o3', 77)
CONTRACT_FIELDS = {
    'customer_id', 'email_sha256', 'first_name', 'country', 'language', 'loyalty_tier',
    'schema_version', 'last_event_at', 'recently_viewed', 'cart', 'orders', 'segment',
    'top_categories', 'recommendations', 'engagement', 'holdout', 'traits', 'audiences'}
CATALOG = {
    'p1': {'product_id': 'p1', 'name': 'Boot', 'category': 'Shoes', 'price': 120.0,
           'currency': 'USD', 'in_stock': True, 'url': 'u1', 'image_url': 'i1'},
    'p2': {'product_id': 'p2', 'name': 'Hat', 'category': 'Hats', 'price': 0.0,
           'currency': 'EUR', 'in_stock': True, 'url': 'u2', 'image_url': 'i2'},
    'p3': {'product_id': 'p3', 'name': 'Sock', 'category': 'Shoes', 'price': 9.995,
           'currency': 'USD', 'in_stock': False, 'url': 'u3', 'image_url': 'i3'},
    '42': {'product_id': '42', 'name': 'Numbered', 'category': None, 'price': None,
           'currency': None, 'in_stock': True, 'url': None, 'image_url': None},
}
MICROS_PER_DAY = 24 * 3600 * 10**6

# Money as clients send it: ordinary prices, zero, negative (refunds, bugs), tiny fractions and
# the contract's extremes (+-10^15).
money = st.one_of(
    st.decimals(min_value=-1000, max_value=10_000, places=2).map(float),
    st.sampled_from([0, 0.0, -0.0, 0.005, 0.015, 1e-9, 1e-12, 0.1 + 0.2, -19.99, 10**15, -10**15,
                     999_999_999_999_999.9, 12345678.123456789]),
    st.floats(min_value=-1e15, max_value=1e15, allow_nan=False, allow_infinity=False))
quantities = st.one_of(st.integers(1, 5), st.sampled_from([1.0, 3.0, 10**9, 10**9 - 1]),
                       st.integers(1, 10**9))
times = st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2099, 12, 31),
                     timezones=st.just(dt.timezone.utc))
# Most events close together (carts, views and orders interleave), some anywhere in 1970..2099.
near_times = st.integers(0, 3 * MICROS_PER_DAY).map(
    lambda us: dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=us))
event_times = st.one_of(near_times, near_times, near_times, times)
texts = st.text(max_size=12)


def optional(**fields):
  return st.fixed_dictionaries({}, optional=fields)


product_line = st.fixed_dictionaries({'product_id': st.sampled_from(PRODUCTS)}, optional={
    'price': money, 'quantity': quantities, 'category': texts, 'name': texts})
product_properties = st.fixed_dictionaries({'product_id': st.sampled_from(PRODUCTS)}, optional={
    'price': money, 'quantity': quantities, 'currency': st.sampled_from(['usd', 'EUR', 'SEK']),
    'name': texts, 'category': st.sampled_from(['Shoes', 'Hats', '', 'Ünïcødé 👟']),
    'url': texts, 'image_url': texts})
order_properties = optional(
    order_id=st.sampled_from(ORDERS), total=money, revenue=money,
    currency=st.sampled_from(['USD', 'eur']), products=st.lists(product_line, max_size=4))
traits = optional(first_name=st.one_of(texts, st.sampled_from(['  ', 'Zoë 👩🏽‍💻', 'عبد الله'])),
                  firstName=texts, unsubscribed=st.booleans(),
                  email=st.sampled_from(['a@example.com', ' B@Example.com ', '']))


@st.composite
def segment_calls(draw, kind=None, customer=None, product=None):
  """One Segment call (a dict, before JSON encoding): of `kind`, from `customer` and about
  `product` when given, else any kind, mostly from c1."""
  kind = kind or draw(st.sampled_from([
      'Product Viewed', 'Product Viewed', 'Product Added', 'Product Added', 'Product Removed',
      'Order Completed', 'Order Cancelled', 'identify', 'Email Opened', 'Email Link Clicked',
      'page', 'screen', 'group', 'alias', 'Checkout Started']))
  call = {'messageId': draw(st.text(min_size=1, max_size=6)),
          'userId': customer or draw(st.sampled_from(('c1', 'c1', 'c1') + CUSTOMERS))}
  at = draw(event_times)
  if draw(st.booleans()):
    call['timestamp'] = at.isoformat()
  else:  # Segment's clock-skew correction: receivedAt - (sentAt - originalTimestamp)
    skew = dt.timedelta(seconds=draw(st.integers(-3600, 3600)))
    call.update(originalTimestamp=at.isoformat(), sentAt=(at + skew).isoformat(),
                receivedAt=at.isoformat())
  if kind == 'identify':
    call.update(type='identify', traits=draw(traits))
  elif kind in ('page', 'screen'):
    call.update(type=kind, name=draw(texts), properties=draw(optional(url=texts)))
  elif kind == 'group':
    # Group traits are the group's: an address there is not the customer's.
    call.update(type='group', groupId=draw(st.sampled_from(['g1', 'g2', ''])),
                traits=draw(traits), context=draw(optional(traits=traits)))
  elif kind == 'alias':
    # previousId: an anonymousId or an earlier userId. Traits on an alias are not the Segment
    # spec's, and the profile takes none from it.
    call.update(type='alias', previousId=draw(st.sampled_from(['a1', 'a2', 'c2', ''])),
                **draw(optional(traits=traits, context=optional(traits=traits))))
  else:
    call.update(type='track', event=kind)
    if kind in ('Product Viewed', 'Product Added', 'Product Removed'):
      call['properties'] = draw(product_properties)
      if product is not None:
        call['properties']['product_id'] = product
    elif kind in ('Order Completed', 'Order Cancelled'):
      call['properties'] = draw(order_properties)
    else:
      # `machine`: an image proxy's or link scanner's hit (kept, never engagement).
      call['properties'] = draw(optional(email=st.just('x@example.com'), machine=st.sampled_from(
          [True, False, 'true', 'no', None])))
  return call


def parsed(calls):
  """The calls the parser accepts, as event records (what the fold gets in the pipeline)."""
  records = []
  for call in calls:
    result = events.parse_event(orjson.dumps(call), 'file:prop', 1)
    if isinstance(result, dict):
      records.append(result)
  return records


crm_rows = st.none() | st.fixed_dictionaries({
    'customer_id': st.just('x'), 'email_sha256': st.none() | st.just('h' * 64),
    'first_name': st.none() | texts, 'country': st.none() | st.just('SE'),
    'language': st.none() | st.just('sv'), 'email_opt_in': st.booleans(),
    'created_at': st.none(), 'loyalty_tier': st.none() | st.just('gold')})


@st.composite
def histories(draw):
  """Calls of a few customers in arbitrary order, including a browsing burst (one customer
  viewing up to 13 distinct products: often more than recently_viewed keeps)."""
  calls = draw(st.lists(segment_calls(), min_size=1, max_size=30))
  customer = draw(st.sampled_from(CUSTOMERS))
  viewed = draw(st.permutations(PRODUCTS))[:draw(st.sampled_from([0, 3, 8, 11, 12, 13]))]
  calls += [draw(segment_calls('Product Viewed', customer, product)) for product in viewed]
  return draw(st.permutations(calls))


calls_strategy = histories()
popularity = st.dictionaries(st.sampled_from(sorted(CATALOG)), st.integers(0, 50), max_size=4)


def non_negative_money(value) -> bool:
  # -0.0 counts as negative: an email would show "-0.00".
  return isinstance(value, float) and math.isfinite(value) and math.copysign(1, value) > 0


def check_document(document: dict, state: dict) -> None:
  assert set(document) == CONTRACT_FIELDS
  cart = document['cart']
  assert all(isinstance(i['quantity'], int) and i['quantity'] > 0 for i in cart['items'])
  assert cart['item_count'] >= 0 and cart['item_count'] == sum(i['quantity'] for i in cart['items'])
  assert non_negative_money(cart['value'])
  assert len({item['product_id'] for item in cart['items']}) == len(cart['items'])
  assert all(i['price'] is None or non_negative_money(i['price']) for i in cart['items'])
  orders = document['orders']
  assert orders['count'] >= 0 and non_negative_money(orders['lifetime_value'])
  assert (orders['count'] == 0) == (orders['last_order_id'] is None)
  viewed = [v['product_id'] for v in document['recently_viewed']]
  assert len(viewed) <= profile.MAX_RECENTLY_VIEWED and len(set(viewed)) == len(viewed)
  assert all(v['price'] is None or non_negative_money(v['price'])
             for v in document['recently_viewed'])
  assert [v['viewed_at'] for v in document['recently_viewed']] == sorted(
      (v['viewed_at'] for v in document['recently_viewed']), reverse=True)
  assert len(document['top_categories']) <= profile.MAX_TOP_CATEGORIES
  assert len(document['recommendations']) <= profile.MAX_RECOMMENDATIONS
  assert document['segment'] in ('vip', 'at_risk', 'active', 'prospect')
  assert document['customer_id'] == state['customer_id']
  assert document['last_event_at'] == schemas.micros_to_datetime(state['last_event_at'])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls_strategy, st.integers(-10, 400 * 24 * 60), crm_rows, popularity)
def test_folding_valid_events_never_raises_and_documents_keep_their_invariants(
    calls, minutes_after, crm, popular):
  records = parsed(calls)
  recommender = profile.Recommender(CATALOG, popular)
  for customer_id in CUSTOMERS:
    mine = [r for r in records if r['user_id'] == customer_id]
    if not mine:
      continue
    reference = max(r['event_time'] for r in mine) + minutes_after * 60 * 10**6
    # Batch folds in event-time order; streaming applies in arrival order. Both must hold up.
    arrival = profile.new_state(customer_id)
    for record in mine:
      profile.apply(arrival, record)
    for state in (profile.fold(customer_id, mine), arrival):
      document = profile.render(state, reference, crm, CATALOG, recommender)
      if document is None:
        assert profile.suppressed(state, crm)
        continue
      check_document(document, state)


def as_page(record: dict) -> dict:
  """A screen, group or alias record as a page call with the same id, time and email."""
  if record['type'] not in (profile.SCREEN, 'group', 'alias'):
    return record
  return {**record, 'type': profile.PAGE}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls_strategy)
def test_screen_group_and_alias_calls_fold_as_a_page_view_does(calls):
  # A screen is a page view; a group or an alias changes only what every event changes (the
  # time last seen, an email it carries): never the traits, even when it sends some. Their
  # linking is the stitching's (tests/unit/test_call_types.py).
  records = parsed(calls)
  for customer_id in CUSTOMERS:
    mine = [r for r in records if r['user_id'] == customer_id]
    assert profile.fold(customer_id, mine) == profile.fold(customer_id, map(as_page, mine))


# Coverage checks of the strategies: the first example found is enough (shrinking costs minutes).
FIND = settings(max_examples=2000, database=None, derandomize=True, phases=[Phase.generate])


@pytest.mark.parametrize('kind', [
    'Product Viewed', 'Product Added', 'Product Removed', 'Order Completed', 'Order Cancelled',
    'identify'])
def test_the_strategy_produces_valid_events_of_each_kind(kind):
  # Otherwise the property above could pass by folding only rejections, or only some events.
  found = find(segment_calls(), lambda c: [profile.event_name(r) for r in parsed([c])] == [kind],
               settings=FIND)
  assert profile.event_name(parsed([found])[0]) == kind


@pytest.mark.parametrize('call_type', ['screen', 'group', 'alias'])
def test_the_strategy_produces_valid_calls_of_each_new_type_some_with_traits(call_type):
  def valid_with_traits(call):
    records = parsed([call])
    return (bool(records) and records[0]['type'] == call_type
            and bool(call_type == 'screen' or call.get('traits', {}).get('first_name')))
  assert find(segment_calls(), valid_with_traits, settings=FIND)


def test_the_strategy_reaches_more_views_than_recently_viewed_keeps():
  def views_of_c1(calls):
    return {r['product_id'] for r in parsed(calls)
            if r['user_id'] == 'c1' and profile.event_name(r) == 'Product Viewed'}
  found = find(calls_strategy, lambda calls: len(views_of_c1(calls)) > profile.MAX_RECENTLY_VIEWED,
               settings=FIND)
  assert len(views_of_c1(found)) > profile.MAX_RECENTLY_VIEWED


# ---- regressions: what the property found, as explicit examples ----------------------------------

_ids = iter(range(10**6))


def call(name, minute=0, **properties):
  """A track call for c1 `minute` minutes after 2026-11-02 10:00, parsed as the pipeline does."""
  payload = {'type': 'track', 'event': name, 'messageId': f'r{next(_ids)}', 'userId': 'c1',
             'timestamp': f'2026-11-02T10:{minute:02d}:00Z', 'properties': properties}
  record = events.parse_event(orjson.dumps(payload), 'file:test', 1)
  assert isinstance(record, dict), record
  return record


def document_for(records):
  state = profile.fold('c1', records)
  return profile.render(state, state['last_event_at'], None, CATALOG,
                        profile.Recommender(CATALOG, {}))


def test_regression_a_negative_price_is_not_a_product_price():
  # Found by the property: Product Viewed {'product_id': 'p4', 'price': -0.01} was shown with
  # price -0.01, and a Product Added with a negative price made the cart value negative.
  document = document_for([
      call('Product Viewed', 0, product_id='p4', price=-0.01),
      call('Product Added', 1, product_id='p4', price=-19.99, quantity=2),
      call('Product Added', 2, product_id='p1', price=-5)])  # p1: the catalog's 120
  assert document['recently_viewed'][0]['price'] is None
  assert document['cart']['items'] == [
      {'product_id': 'p1', 'name': 'Boot', 'price': 120.0, 'quantity': 1},
      {'product_id': 'p4', 'name': None, 'price': None, 'quantity': 2}]
  assert document['cart']['value'] == 120.0 and document['cart']['item_count'] == 3
  # A price already known is kept when a later event sends a negative one.
  document = document_for([call('Product Viewed', 0, product_id='p9', price=10),
                           call('Product Viewed', 1, product_id='p9', price=-10)])
  assert document['recently_viewed'][0]['price'] == 10.0


def test_regression_negative_order_amounts_never_make_a_negative_lifetime_value():
  document = document_for([
      call('Order Completed', 0, order_id='o1', total=-50),                # nothing usable: 0
      call('Order Completed', 1, order_id='o2', total=-50, revenue=30),    # falls back: 30
      call('Order Completed', 2, order_id='o3', products=[                 # lines >= 0: 14
          {'product_id': 'p9', 'price': -100}, {'product_id': 'p8', 'price': 7, 'quantity': 2}])])
  assert document['orders']['count'] == 3
  assert document['orders']['lifetime_value'] == 44.0
  assert document['segment'] == 'active'


def test_regression_negative_zero_money_is_shown_as_zero():
  # Found by the property: a price of -0.0 (valid JSON, valid per the contract) rendered as -0.0.
  document = document_for([call('Product Viewed', 0, product_id='p9', price=-0.0),
                           call('Product Added', 1, product_id='p9', price=-0.0)])
  for amount in (document['recently_viewed'][0]['price'], document['cart']['items'][0]['price'],
                 document['cart']['value'], profile.money(decimal.Decimal('-0.004'))):
    assert amount == 0.0 and math.copysign(1, amount) == 1


def test_regression_carts_and_orders_at_the_contracts_extremes_still_render():
  # 101 adds of 10^9 units at 10^15 each: rounding the cart value to cents raised
  # decimal.InvalidOperation (28 significant digits), so the customer's document could never be
  # rendered. Likewise a lifetime value over 10^26.
  document = document_for([call('Product Added', i % 60, product_id='p9', price=10**15,
                                quantity=10**9) for i in range(101)])
  assert document['cart']['item_count'] == 101 * 10**9
  assert document['cart']['value'] == 1.01e26
  document = document_for([
      call('Order Completed', i % 60, order_id=f'o{i}', products=[
          {'product_id': f'p{j}', 'price': 10**15, 'quantity': 10**9} for j in range(4)])
      for i in range(30)])
  assert document['orders']['lifetime_value'] == 1.2e26 and document['segment'] == 'vip'
