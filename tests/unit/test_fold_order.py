"""The profile fold does not depend on arrival order (transforms.rules.profile.fold).

A property test over random customer histories (views, adds, removes, orders, cancellations,
identifies, opens and clicks, screens, groups and aliases, many of them at the same minute so ties
by message id matter) and
random arrival permutations: folding in arrival order gives the state, and so the document, that
folding sorted by event time gives. Then the contract's own examples, and the cart's bound.
"""
import datetime as dt
import decimal

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_profile_properties import CATALOG, histories, parsed
from transforms.rules import events, profile

BASE = dt.datetime(2026, 11, 2, 8, 0, tzinfo=dt.timezone.utc)
PRODUCTS = ('p1', 'p2', 'p3', 'p9')
KINDS = ('Product Viewed', 'Product Added', 'Product Added', 'Product Removed', 'Order Completed',
         'Order Cancelled', 'identify', 'Email Opened', 'Email Link Clicked', 'screen', 'group',
         'alias')
EMAILS = st.sampled_from(['a@example.com', 'b@example.com'])


@st.composite
def cart_heavy_calls(draw):
  """One customer's calls, close in time (minutes 0..30, so equal times are common) over a few
  products and orders: the histories where arrival order would show if any rule depended on it."""
  calls = []
  for index in range(draw(st.integers(1, 40))):
    kind = draw(st.sampled_from(KINDS))
    call = {'messageId': f'm{draw(st.integers(0, 10**6))}-{index}', 'userId': 'c1',
            'timestamp': (BASE + dt.timedelta(minutes=draw(st.integers(0, 30)))).isoformat()}
    traits = st.fixed_dictionaries({}, optional={
        'first_name': st.sampled_from(['Ann', 'Bo', 'Cy']), 'unsubscribed': st.booleans(),
        'email': EMAILS})
    if kind == 'identify':
      call.update(type='identify', traits=draw(traits))
    elif kind == 'screen':
      call.update(type='screen', name=draw(st.sampled_from(['Home', 'Cart'])))
    elif kind in ('group', 'alias'):
      # Emails in context.traits (the customer's) compete with the identifies' in the
      # newest-wins register; traits (a group's, or sent on an alias) must change nothing.
      call.update(type=kind, traits=draw(traits), **draw(st.fixed_dictionaries({}, optional={
          'context': st.fixed_dictionaries({'traits': st.fixed_dictionaries({'email': EMAILS})})})))
      call.update({'groupId': 'g1'} if kind == 'group' else {'previousId': 'a1'})
    else:
      call.update(type='track', event=kind)
      if kind.startswith('Product'):
        call['properties'] = draw(st.fixed_dictionaries(
            {'product_id': st.sampled_from(PRODUCTS)},
            optional={'quantity': st.integers(1, 3), 'price': st.sampled_from([5, 7.5, 12]),
                      'name': st.sampled_from(['A', 'B']),
                      'category': st.sampled_from(['Shoes', 'Hats']),
                      'currency': st.sampled_from(['USD', 'EUR'])}))
      elif kind.startswith('Order'):
        call['properties'] = draw(st.fixed_dictionaries(
            {'order_id': st.sampled_from(['o1', 'o2', 'o3'])},
            optional={'total': st.sampled_from([10, 20, 30]),
                      'products': st.lists(st.fixed_dictionaries(
                          {'product_id': st.sampled_from(PRODUCTS)},
                          optional={'price': st.sampled_from([1, 2]),
                                    'category': st.sampled_from(['Shoes', 'Toys'])}),
                          max_size=2)}))
    calls.append(call)
  return calls


def arrival_fold(customer_id, records):
  state = profile.new_state(customer_id)
  for record in records:
    profile.apply(state, record)
  return state


def documents(state):
  """The document at reference times around the cart's abandonment and the at-risk threshold."""
  recommender = profile.Recommender(CATALOG, {'p1': 3, 'p2': 1})
  last = state['last_event_at'] or 0
  return [profile.render(state, last + minutes * 60 * 10**6, None, CATALOG, recommender)
          for minutes in (0, 61, 90 * 24 * 60 + 1)]


def assert_order_insensitive(records, permutation):
  # The pipeline's dedupe runs first: one event per message id (the strategies reuse ids).
  unique = {}
  for record in records:
    unique.setdefault(record['message_id'], record)
  by_customer = {}
  for record in unique.values():
    by_customer.setdefault(record['user_id'], []).append(record)
  for customer_id, mine in by_customer.items():
    arrived = [mine[i] for i in permutation(len(mine))]
    sorted_state = profile.fold(customer_id, mine)
    arrival_state = arrival_fold(customer_id, arrived)
    assert arrival_state == sorted_state
    assert documents(arrival_state) == documents(sorted_state)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cart_heavy_calls(), st.randoms(use_true_random=False))
def test_any_arrival_order_folds_to_the_sorted_state(calls, rnd):
  records = parsed(calls)

  def permutation(n):
    order = list(range(n))
    rnd.shuffle(order)
    return order
  assert_order_insensitive(records, permutation)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.randoms(use_true_random=False))
def test_any_arrival_order_of_wide_histories_folds_to_the_sorted_state(calls, rnd):
  # The invariant-checking strategy's histories: several customers, times 1970..2099, extreme
  # money and quantities, odd names.
  def permutation(n):
    order = list(range(n))
    rnd.shuffle(order)
    return order
  assert_order_insensitive(parsed(calls), permutation)


def test_the_strategy_reaches_the_order_sensitive_cases():
  # Otherwise the property could pass on histories where order never mattered.
  from hypothesis import Phase, find
  find_settings = settings(max_examples=3000, database=None, derandomize=True,
                           phases=[Phase.generate])

  def names(calls):
    return [profile.event_name(r) for r in parsed(calls)]

  def add_then_order_then_add(calls):
    seen = names(calls)
    return ('Order Completed' in seen and seen.index('Order Completed') > 0 and
            'Product Added' in seen[:seen.index('Order Completed')] and
            'Product Added' in seen[seen.index('Order Completed'):])
  assert find(cart_heavy_calls(), add_then_order_then_add, settings=find_settings)

  def tied_identifies(calls):
    times = [r['event_time'] for r in parsed(calls) if r['type'] == 'identify']
    return len(times) != len(set(times))
  assert find(cart_heavy_calls(), tied_identifies, settings=find_settings)

  def remove_below_zero(calls):
    return any(n == 'Product Removed' for n in names(calls)) and 'Product Added' in names(calls)
  assert find(cart_heavy_calls(), remove_below_zero, settings=find_settings)


# ---- the contract's examples -------------------------------------------------------------------

_ids = iter(range(10**6))


def segment_call(kind, when, user=None, anon=None, **fields):
  """A Segment call at `when` (a datetime), parsed as the pipeline parses it: `identify` (fields
  are traits), `page` or `screen` (a `name` field, the rest properties), `group` (a `group_id`
  field, the rest traits), `alias` (a `previous_id` field, the rest traits) or a track event
  named `kind` (fields are properties)."""
  payload = {'messageId': f'e{next(_ids):04d}', 'timestamp': when.isoformat(),
             **({'userId': user} if user else {}), **({'anonymousId': anon} if anon else {})}
  if kind == 'identify':
    payload.update(type='identify', traits=fields)
  elif kind in ('page', 'screen'):
    payload.update(type=kind, name=fields.pop('name', None), properties=fields)
  elif kind == 'group':
    payload.update(type='group', groupId=fields.pop('group_id'), traits=fields)
  elif kind == 'alias':
    payload.update(type='alias', previousId=fields.pop('previous_id'), traits=fields)
  else:
    payload.update(type='track', event=kind, properties=fields)
  record = events.parse_event(orjson.dumps(payload), 'file:test', 1)
  assert isinstance(record, dict), record
  return record


def call(kind, when, **fields):
  """A parsed call of c1."""
  return segment_call(kind, when, 'c1', **fields)


MORNING = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.timezone.utc)


def render(state):
  return profile.render(state, state['last_event_at'], None, CATALOG,
                        profile.Recommender(CATALOG, {}))


def test_a_late_old_order_never_empties_a_cart_built_after_it():
  # The example: an Order Completed of three days ago arrives after this morning's adds.
  old_order = call('Order Completed', MORNING - dt.timedelta(days=3), order_id='o1', total=40)
  adds = [call('Product Added', MORNING + dt.timedelta(minutes=i), product_id='p1')
          for i in range(2)]
  late = arrival_fold('c1', adds + [old_order])
  cart = render(late)['cart']
  assert cart['items'] == [{'product_id': 'p1', 'name': 'Boot', 'price': 120.0, 'quantity': 2}]
  assert render(late)['orders']['count'] == 1
  assert late == profile.fold('c1', adds + [old_order])


def test_an_order_empties_what_the_cart_held_at_its_time_whenever_it_arrives():
  before = call('Product Added', MORNING, product_id='p1')
  order = call('Order Completed', MORNING + dt.timedelta(minutes=5), order_id='o1')
  after = call('Product Added', MORNING + dt.timedelta(minutes=9), product_id='p2')
  for arrival in ([before, order, after], [after, order, before], [order, after, before],
                  [after, before, order]):
    cart = render(arrival_fold('c1', arrival))['cart']
    assert [item['product_id'] for item in cart['items']] == ['p2'], arrival


def test_a_remove_before_its_add_in_event_time_still_removes_nothing():
  # Event time: remove at 9:00 (nothing to remove), add at 9:01 -> 1 in the cart, even when the
  # add arrives first (arrival order would have removed it).
  remove = call('Product Removed', MORNING, product_id='p1')
  add = call('Product Added', MORNING + dt.timedelta(minutes=1), product_id='p1')
  assert render(arrival_fold('c1', [add, remove]))['cart']['item_count'] == 1
  assert render(profile.fold('c1', [add, remove]))['cart']['item_count'] == 1


def test_the_newest_identify_by_event_time_wins_not_the_last_to_arrive():
  new = call('identify', MORNING, first_name='New', unsubscribed=False)
  old = call('identify', MORNING - dt.timedelta(days=2), first_name='Old', unsubscribed=True)
  state = arrival_fold('c1', [new, old])
  document = render(state)
  assert document is not None and document['first_name'] == 'New'
  assert profile.render(arrival_fold('c1', [old, new]), 0, None, CATALOG)['first_name'] == 'New'


def test_product_fields_come_from_the_newest_event_by_event_time():
  newer = call('Product Viewed', MORNING, product_id='p9', name='New name', price=9)
  older = call('Product Viewed', MORNING - dt.timedelta(hours=1), product_id='p9',
               name='Old name', price=4)
  viewed = render(arrival_fold('c1', [newer, older]))['recently_viewed'][0]
  assert (viewed['name'], viewed['price']) == ('New name', 9.0)


def test_a_redelivered_cart_operation_is_not_counted_twice():
  add = call('Product Added', MORNING, product_id='p1', quantity=2)
  assert render(arrival_fold('c1', [add, dict(add)]))['cart']['item_count'] == 2


# ---- the cart's bound ------------------------------------------------------------------------


def test_cart_operations_are_bounded_and_still_exact_in_event_time_order():
  adds = [call('Product Added', MORNING + dt.timedelta(seconds=i), product_id=PRODUCTS[i % 4])
          for i in range(5 * profile.MAX_CART_OPS)]
  removes = [call('Product Removed', MORNING + dt.timedelta(seconds=i, milliseconds=500),
                  product_id='p1') for i in range(0, 5 * profile.MAX_CART_OPS, 8)]
  state = profile.fold('c1', adds + removes)
  assert len(state['cart_ops']) <= profile.MAX_CART_OPS
  expected: dict = {}
  for record in sorted(adds + removes, key=lambda r: r['event_time']):
    delta = 1 if record['event'] == 'Product Added' else -1
    left = expected.get(record['product_id'], 0) + delta
    if left > 0:
      expected[record['product_id']] = left
    else:
      expected.pop(record['product_id'], None)
  assert state['cart'] == expected
  # Arrival out of order within the operations kept one by one stays exact.
  recent = adds[-20:]
  assert arrival_fold('c1', adds[:-20] + recent[::-1])['cart'] == profile.fold('c1', adds)['cart']


def test_past_the_bound_an_operation_older_than_the_compacted_ones_is_applied_late():
  # The documented limit: with more than MAX_CART_OPS operations since the last order, a remove
  # older than the compacted operations is applied onto the compacted cart, as if it came then.
  adds = [call('Product Added', MORNING + dt.timedelta(seconds=i), product_id='p1')
          for i in range(1, 2 * profile.MAX_CART_OPS)]
  early_remove = call('Product Removed', MORNING, product_id='p1')
  late = arrival_fold('c1', adds + [early_remove])
  assert late['cart']['p1'] == len(adds) - 1            # applied late: one fewer
  assert profile.fold('c1', adds + [early_remove])['cart']['p1'] == len(adds)  # event time: none


def test_a_state_stored_by_the_previous_fold_is_upgraded_and_folds_on():
  # What the previous fold kept (a streaming job updated in place keeps its state).
  old = {'customer_id': 'c1', 'last_event_at': 50, 'email_sha256': (10, 'h' * 64),
         'first_name': (20, 'Ann'), 'unsubscribed': (20, False), 'views': {'p1': 30},
         'products': {'p1': {'name': 'Old boot', 'price': decimal.Decimal(5)}},
         'scores': {'p1': 4}, 'cart': {'p1': 2}, 'cart_updated_at': 40, 'cart_currency': 'EUR',
         'orders': {'o1': {'at': 5, 'value': decimal.Decimal(9), 'currency': 'USD',
                           'products': []}},
         'cancelled': ['o9'], 'email_opened_at': None, 'email_clicked_at': None}
  state = profile.upgraded(old)
  document = profile.render(state, 60, None, {}, None)
  assert document['first_name'] == 'Ann' and document['cart']['currency'] == 'EUR'
  assert document['cart']['items'] == [
      {'product_id': 'p1', 'name': 'Old boot', 'price': 5.0, 'quantity': 2}]
  assert document['orders']['count'] == 1
  # New events fold on top: an order older than the cart does not empty it, a newer one does.
  record = call('Order Completed', MORNING, order_id='o2')
  profile.apply(state, {**record, 'event_time': 3})
  assert state['cart'] == {'p1': 2}
  profile.apply(state, {**record, 'message_id': 'later', 'order_id': 'o3', 'event_time': 45})
  assert state['cart'] == {} and profile.upgraded(state) is state
