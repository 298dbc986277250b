"""The profile fold's rules, one by one (transforms.rules.profile)."""
import datetime as dt
import decimal
import random

import pytest

import schemas
from transforms.rules import profile

T0 = schemas.datetime_to_micros(dt.datetime(2026, 11, 10, 12, 0, tzinfo=dt.timezone.utc))
MINUTE = 60 * 1_000_000
DAY = 24 * 60 * MINUTE

CATALOG = {
    'p1': {'product_id': 'p1', 'name': 'Trail Runner', 'category': 'Shoes', 'price': 120.0,
           'currency': 'USD', 'in_stock': True, 'url': 'https://shop/p1', 'image_url': 'i/p1'},
    'p2': {'product_id': 'p2', 'name': 'Rain Jacket', 'category': 'Outerwear', 'price': 80.5,
           'currency': 'USD', 'in_stock': True, 'url': 'https://shop/p2', 'image_url': 'i/p2'},
    'p3': {'product_id': 'p3', 'name': 'Wool Socks', 'category': 'Shoes', 'price': 9.99,
           'currency': 'USD', 'in_stock': True, 'url': 'https://shop/p3', 'image_url': 'i/p3'},
    'p4': {'product_id': 'p4', 'name': 'Sandal', 'category': 'Shoes', 'price': 30.0,
           'currency': 'USD', 'in_stock': False, 'url': 'https://shop/p4', 'image_url': 'i/p4'},
    'p5': {'product_id': 'p5', 'name': 'Scarf', 'category': 'Accessories', 'price': 15.0,
           'currency': 'USD', 'in_stock': True, 'url': 'https://shop/p5', 'image_url': 'i/p5'},
}

_ids = iter(range(10**6))


def ev(name, minutes=0, type_='track', **fields):
  """An event record as parse_event makes it (only the fields the fold reads)."""
  return {'message_id': f'm{next(_ids)}', 'type': type_, 'event': name if type_ == 'track' else None,
          'event_time': T0 + minutes * MINUTE, 'user_id': 'c1', 'email_sha256': None,
          'product_id': None, 'order_id': None, 'price': None, 'total': None, 'revenue': None,
          'quantity': None, 'currency': None, 'properties': {}, 'traits': None, **fields}


def view(pid, minutes, **properties):
  price = properties.get('price')
  return ev('Product Viewed', minutes, product_id=pid, quantity=1, properties=properties,
            price=None if price is None else decimal.Decimal(str(price)))


def added(pid, minutes, quantity=1, price=None, **properties):
  return ev('Product Added', minutes, product_id=pid, quantity=quantity,
            price=None if price is None else decimal.Decimal(str(price)), properties=properties)


def removed(pid, minutes, quantity=1):
  return ev('Product Removed', minutes, product_id=pid, quantity=quantity)


def order(order_id, minutes, total=None, revenue=None, products=(), currency='USD'):
  return ev('Order Completed', minutes, order_id=order_id,
            total=None if total is None else decimal.Decimal(str(total)),
            revenue=None if revenue is None else decimal.Decimal(str(revenue)), currency=currency,
            properties={'products': [dict(p) for p in products]})


def identify(minutes, **traits):
  return ev(None, minutes, type_='identify', traits=traits)


def doc(events, minutes_after=0, customer=None, catalog=CATALOG, popularity=None, **settings):
  state = profile.fold('c1', events)
  reference = max(e['event_time'] for e in events) + minutes_after * MINUTE
  return profile.render(state, reference, customer, catalog,
                        profile.Recommender(catalog, popularity or {}),
                        profile.Settings(**settings))


def test_the_fold_does_not_depend_on_input_order():
  events = [view('p1', 1), added('p1', 2), view('p2', 3), removed('p1', 4), added('p3', 5, 2),
            order('o1', 6, total=20, products=[{'product_id': 'p3', 'price': 9.99}]),
            identify(0, first_name='Ann'), ev('Email Opened', 7)]
  shuffled = list(events)
  random.Random(3).shuffle(shuffled)
  assert profile.fold('c1', events) == profile.fold('c1', shuffled)


def test_recently_viewed_newest_first_one_entry_per_product_catalog_first():
  events = [view('p1', 1), view('p2', 2), view('p1', 3),
            view('zz', 4, name='Gone Product', category='Hats', price=5, url='u/zz')]
  viewed = doc(events)['recently_viewed']
  assert [v['product_id'] for v in viewed] == ['zz', 'p1', 'p2']
  assert viewed[1] == {'product_id': 'p1', 'name': 'Trail Runner', 'category': 'Shoes',
                       'price': 120.0, 'url': 'https://shop/p1', 'image_url': 'i/p1',
                       'viewed_at': schemas.micros_to_datetime(T0 + 3 * MINUTE)}
  # A product missing from the catalog falls back to the event's own properties.
  assert viewed[0]['name'] == 'Gone Product' and viewed[0]['price'] == 5.0
  assert viewed[0]['image_url'] is None


def test_recently_viewed_keeps_the_ten_newest():
  events = [view(f'x{i:02d}', i) for i in range(15)]
  viewed = doc(events)['recently_viewed']
  assert [v['product_id'] for v in viewed] == [f'x{i:02d}' for i in range(14, 4, -1)]


def test_cart_adds_removes_below_zero_and_values_with_catalog_price():
  events = [added('p1', 1, 2), added('p3', 2), removed('p1', 3), removed('p3', 4, 5),
            added('zz', 5, 3, price=1.255, name='Thing')]
  cart = doc(events)['cart']
  assert cart['items'] == [{'product_id': 'p1', 'name': 'Trail Runner', 'price': 120.0,
                            'quantity': 1},
                           {'product_id': 'zz', 'name': 'Thing', 'price': 1.26, 'quantity': 3}]
  assert cart['item_count'] == 4
  assert cart['value'] == 123.76  # 120 + 3 x 1.255 = 123.765 -> half-even to cents
  assert cart['currency'] == 'USD'
  assert cart['updated_at'] == schemas.micros_to_datetime(T0 + 5 * MINUTE)


def test_order_completed_empties_the_cart():
  cart = doc([added('p1', 1), order('o1', 2, total=120)])['cart']
  assert cart['items'] == [] and cart['item_count'] == 0 and cart['value'] == 0.0
  assert cart['abandoned'] is False


@pytest.mark.parametrize('minutes_after, abandoned', [(0, False), (60, False), (61, True)])
def test_cart_is_abandoned_after_the_configured_minutes(minutes_after, abandoned):
  assert doc([added('p1', 0)], minutes_after)['cart']['abandoned'] is abandoned
  assert doc([added('p1', 0)], minutes_after, cart_abandon_minutes=120)['cart'][
      'abandoned'] is False


def test_orders_distinct_ids_value_fallbacks_and_cancellation():
  events = [
      order('o1', 1, total=100, revenue=90),
      order('o1', 2, total=100, revenue=90),                 # same order again: counted once
      order('o2', 3, revenue=40),                            # no total: revenue
      order('o3', 4, products=[{'product_id': 'p3', 'price': 9.99, 'quantity': 2},
                               {'product_id': 'p5', 'price': 15}]),  # neither: sum of lines
      order('o4', 5, total=1000),
      ev('Order Cancelled', 6, order_id='o4'),
  ]
  orders = doc(events)['orders']
  assert orders == {'count': 3, 'lifetime_value': 174.98, 'last_order_id': 'o3',
                    'last_order_at': schemas.micros_to_datetime(T0 + 4 * MINUTE),
                    'currency': 'USD'}


def test_a_cancellation_seen_before_its_order_still_removes_it():
  events = [ev('Order Cancelled', 1, order_id='o9'), order('o9', 0, total=50)]
  assert doc(events)['orders']['count'] == 0


@pytest.mark.parametrize('events_spec, minutes_after, expected', [
    ([], 0, 'prospect'),
    ([('o1', 500)], 0, 'vip'),
    ([('o1', 499.99)], 0, 'active'),
    ([(f'o{i}', 1) for i in range(5)], 0, 'vip'),
    ([('o1', 10)], 90 * 24 * 60, 'active'),
    ([('o1', 10)], 90 * 24 * 60 + 1, 'at_risk'),
])
def test_segment(events_spec, minutes_after, expected):
  events = [view('p1', 0)] + [order(oid, 0, total=value) for oid, value in events_spec]
  assert doc(events, minutes_after)['segment'] == expected


def test_vip_threshold_is_a_setting():
  assert doc([order('o1', 0, total=100)], vip_lifetime_value=decimal.Decimal(100))[
      'segment'] == 'vip'


def test_top_categories_weighted_and_ties_by_name():
  events = [view('p1', 1), view('p3', 2),                  # Shoes 2
            added('p2', 3),                                  # Outerwear 3
            view('p5', 4), view('p5', 5), view('p5', 6),     # Accessories 3
            view('zz', 7, category='Hats')]                  # Hats 1 (from the event)
  assert doc(events)['top_categories'] == ['Accessories', 'Outerwear', 'Shoes']
  events.append(order('o1', 8, total=10, products=[{'product_id': 'zz'}]))  # Hats 1 + 5
  assert doc(events)['top_categories'] == ['Hats', 'Accessories', 'Outerwear']


def test_recommendations_in_stock_from_top_categories_by_popularity_then_overall():
  popularity = {'p1': 5, 'p2': 9, 'p3': 5, 'p4': 50, 'p5': 1}
  # Top category Shoes: p4 is out of stock, p1 and p3 tie on popularity (ties by product_id);
  # then filled from overall popularity: p2, p5.
  recs = doc([view('p3', 1)], popularity=popularity)['recommendations']
  assert [(r['product_id'], r['reason']) for r in recs] == [
      ('p1', 'popular in Shoes'), ('p3', 'popular in Shoes'), ('p2', 'popular now'),
      ('p5', 'popular now')]
  assert recs[0] == {'product_id': 'p1', 'name': 'Trail Runner', 'price': 120.0,
                     'url': 'https://shop/p1', 'image_url': 'i/p1', 'reason': 'popular in Shoes'}


def test_recommendations_exclude_bought_and_in_cart_products():
  popularity = {'p1': 5, 'p2': 9, 'p3': 5, 'p5': 1}
  events = [view('p3', 1), added('p1', 2),
            order('o1', 3, total=10, products=[{'product_id': 'p3'}]), added('p1', 4)]
  recs = doc(events, popularity=popularity)['recommendations']
  assert [r['product_id'] for r in recs] == ['p2', 'p5']  # all else excluded or out of stock


def test_recommendations_from_a_cancelled_order_are_allowed_again():
  events = [order('o1', 1, total=10, products=[{'product_id': 'p2'}]),
            ev('Order Cancelled', 2, order_id='o1')]
  assert 'p2' in [r['product_id'] for r in doc(events)['recommendations']]


def test_identity_fields_traits_win_over_crm():
  crm = {'customer_id': 'c1', 'email_sha256': 'crmhash', 'first_name': 'Anna', 'country': 'SE',
         'language': 'sv', 'email_opt_in': True, 'loyalty_tier': 'gold'}
  document = doc([identify(1, first_name='Ann'), view('p1', 2, )], customer=crm)
  assert (document['first_name'], document['email_sha256']) == ('Ann', 'crmhash')
  assert (document['country'], document['language'], document['loyalty_tier']) == (
      'SE', 'sv', 'gold')
  hashed = ev('Product Viewed', 3, product_id='p1', email_sha256='eventhash')
  assert doc([hashed], customer=crm)['email_sha256'] == 'eventhash'
  assert doc([view('p1', 1)], customer=crm)['first_name'] == 'Anna'


def test_consent_crm_opt_out_or_latest_identify_unsubscribed_means_no_document():
  assert doc([view('p1', 1)], customer={'email_opt_in': False}) is None
  assert doc([view('p1', 1)], customer={'email_opt_in': True}) is not None
  assert doc([identify(1, unsubscribed=True)]) is None
  assert doc([identify(1, unsubscribed=True), identify(2, unsubscribed=False)]) is not None
  assert doc([identify(2, unsubscribed=True), identify(1, unsubscribed=False)]) is None


def test_engagement_and_last_event_at():
  document = doc([ev('Email Opened', 5), ev('Email Opened', 2), ev('Email Link Clicked', 3),
                  view('p1', 9)])
  assert document['engagement'] == {
      'last_email_open_at': schemas.micros_to_datetime(T0 + 5 * MINUTE),
      'last_email_click_at': schemas.micros_to_datetime(T0 + 3 * MINUTE)}
  assert document['last_event_at'] == schemas.micros_to_datetime(T0 + 9 * MINUTE)
  assert document['schema_version'] == 1


def test_machine_opens_and_clicks_never_move_engagement():
  """Apple Mail Privacy Protection, image proxies and link scanners (properties.machine true, from
  the collector or forwarded by an ESP as true or "true") are kept as events but never engagement."""
  machine = {'machine': True, 'machine_reason': 'apple_mail_privacy'}
  document = doc([ev('Email Opened', 1), ev('Email Opened', 8, properties=machine),
                  ev('Email Link Clicked', 2, properties={'machine': False}),
                  ev('Email Link Clicked', 9, properties={'machine': 'TRUE'}), view('p1', 10)])
  assert document['engagement'] == {
      'last_email_open_at': schemas.micros_to_datetime(T0 + 1 * MINUTE),
      'last_email_click_at': schemas.micros_to_datetime(T0 + 2 * MINUTE)}
  only_machine = doc([ev('Email Opened', 8, properties=machine), view('p1', 10)])
  assert only_machine['engagement'] == {'last_email_open_at': None, 'last_email_click_at': None}
  # The events still count as activity.
  assert only_machine['last_event_at'] == schemas.micros_to_datetime(T0 + 10 * MINUTE)


def test_holdout_flag_follows_the_shared_assignment():
  from transforms.rules.holdout import Holdout
  assert doc([view('p1', 1)])['holdout'] is False  # off by default
  everyone = Holdout(50, 'x')
  ids = [f'c{i}' for i in range(200)]
  held = [i for i in ids if everyone.held_out(i)]
  kept = [i for i in ids if not everyone.held_out(i)]
  assert held and kept
  for customer_id, expected in ((held[0], True), (kept[0], False)):
    state = profile.fold(customer_id, [view('p1', 1)])
    document = profile.render(state, T0, settings=profile.Settings(holdout=everyone))
    assert document['holdout'] is expected


def test_document_has_exactly_the_contract_fields():
  assert set(doc([view('p1', 1)])) == {
      'customer_id', 'email_sha256', 'first_name', 'country', 'language', 'loyalty_tier',
      'schema_version', 'last_event_at', 'recently_viewed', 'cart', 'orders', 'segment',
      'top_categories', 'recommendations', 'engagement', 'holdout', 'traits', 'audiences'}


def test_interacted_products_for_popularity():
  assert profile.interacted_products(view('p1', 0)) == ['p1']
  assert profile.interacted_products(added('p2', 0)) == ['p2']
  assert profile.interacted_products(removed('p2', 0)) == []
  assert profile.interacted_products(order('o', 0, products=[
      {'product_id': 'p3'}, {'product_id': 7}, {'product_id': 'p3'}])) == ['7', 'p3']


@pytest.mark.parametrize('fields, message', [
    ({'cart_abandon_minutes': 0}, '--cart_abandon_minutes must be positive'),
    ({'cart_abandon_minutes': float('nan')}, '--cart_abandon_minutes must be positive'),
    ({'vip_lifetime_value': decimal.Decimal(-1)}, '--vip_lifetime_value must be a number, zero'),
    ({'vip_lifetime_value': decimal.Decimal('NaN')}, '--vip_lifetime_value must be a number'),
    ({'vip_lifetime_value': decimal.Decimal('Infinity')}, '--vip_lifetime_value must be a'),
    ({'vip_order_count': 0}, 'vip_order_count must be at least 1'),
    ({'at_risk_days': -1}, 'at_risk_days must be positive')])
def test_settings_are_checked_once_when_built(fields, message):
  with pytest.raises(ValueError, match=message):
    profile.Settings(**fields)


def test_the_abandonment_rule_is_one_function_of_the_state():
  state = profile.fold('c1', [added('p1', 0)])
  due = profile.cart_abandoned_from(state, profile.Settings(cart_abandon_minutes=60))
  assert due == T0 + 60 * MINUTE + 1
  settings = profile.Settings(cart_abandon_minutes=60)
  assert not profile.render(state, due - 1, settings=settings)['cart']['abandoned']
  assert profile.render(state, due, settings=settings)['cart']['abandoned']
  assert profile.cart_abandoned_from(profile.fold('c1', [view('p1', 0)]), settings) is None
