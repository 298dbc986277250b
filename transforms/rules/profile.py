"""The customer profile as a fold. Pure functions, no Beam.

`new_state(customer_id)` starts a profile; `apply(state, event)` folds one event into it (batch
folds a customer's events in event-time order, streaming as they come); `render(state, ...)` turns
the state, the reference time, the CRM row, the catalog and product popularity into the serving
document (`customers/{customer_id}`, docs/DATA_CONTRACT.md), or None when the customer must not
be emailed. Both paths run these functions, so a test of a rule is a test of both.

The state is plain dicts, lists and Decimals (picklable, small): what `render` needs and nothing
more. Times are epoch microseconds.
"""
from __future__ import annotations

import dataclasses
import decimal
import heapq
from typing import Any, Iterable, Mapping

import schemas

SCHEMA_VERSION = 1

PRODUCT_VIEWED = 'Product Viewed'
PRODUCT_ADDED = 'Product Added'
PRODUCT_REMOVED = 'Product Removed'
ORDER_COMPLETED = 'Order Completed'
ORDER_CANCELLED = 'Order Cancelled'
EMAIL_OPENED = 'Email Opened'
EMAIL_CLICKED = 'Email Link Clicked'

# Interaction weights for top_categories.
VIEW_WEIGHT, ADD_WEIGHT, ORDER_WEIGHT = 1, 3, 5
MAX_RECENTLY_VIEWED = 10
MAX_TOP_CATEGORIES = 3
MAX_RECOMMENDATIONS = 4
_CENT = decimal.Decimal('0.01')
# Money arithmetic. Decimal's default 28 digits cannot round a cart line at the contract's maximum
# price (10^15) and a large quantity to cents (quantize raises InvalidOperation) and would round
# products silently; 60 digits keep every sum exact.
_MONEY = decimal.Context(prec=60)
_MICROS_PER_MINUTE = 60 * 1_000_000
_MICROS_PER_DAY = 24 * 60 * _MICROS_PER_MINUTE
_PRODUCT_FIELDS = ('name', 'category', 'price', 'url', 'image_url')


@dataclasses.dataclass(frozen=True)
class Settings:
  """The tunable rules (pipeline options of the same names)."""
  cart_abandon_minutes: float = 60
  vip_lifetime_value: decimal.Decimal = decimal.Decimal(500)
  vip_order_count: int = 5
  at_risk_days: float = 90


def event_name(event: dict) -> str:
  """The name an event is counted under: the track event name, else the call type."""
  return event['event'] if event['type'] == 'track' and event.get('event') else event['type']


def new_state(customer_id: str) -> dict:
  return {
      'customer_id': customer_id,
      'last_event_at': None,
      'email_sha256': None,     # (time, hash) of the newest event carrying an email
      'first_name': None,       # (time, name) of the newest identify with traits.first_name
      'unsubscribed': None,     # (time, bool) of the newest identify with traits.unsubscribed
      'views': {},              # product_id -> newest view time (the newest MAX_RECENTLY_VIEWED)
      'products': {},           # product_id -> product fields as events described it
      'scores': {},             # product_id -> weighted interactions
      'cart': {},               # product_id -> quantity
      'cart_updated_at': None,
      'cart_currency': None,
      'orders': {},             # order_id -> {'at', 'value', 'currency', 'products'}
      'cancelled': [],          # order ids cancelled (even before they were seen completed)
      'email_opened_at': None,
      'email_clicked_at': None,
  }


def apply(state: dict, event: dict) -> dict:
  """Folds one event into the profile state (updated in place and returned: the fold owns it)."""
  at = event['event_time']
  if state['last_event_at'] is None or at > state['last_event_at']:
    state['last_event_at'] = at
  if event.get('email_sha256'):
    state['email_sha256'] = _newest(state['email_sha256'], at, event['email_sha256'])
  if event['type'] == 'identify':
    _apply_identify(state, event, at)
    return state
  name = event_name(event)
  properties = event.get('properties') if isinstance(event.get('properties'), dict) else {}
  product_id = event.get('product_id')
  if product_id is not None and name in (PRODUCT_VIEWED, PRODUCT_ADDED, PRODUCT_REMOVED):
    _remember_product(state, product_id, properties, _amount(event.get('price')))
  if name == PRODUCT_VIEWED and product_id is not None:
    _score(state, product_id, VIEW_WEIGHT)
    views = state['views']
    views[product_id] = max(at, views.get(product_id, at))
    if len(views) > MAX_RECENTLY_VIEWED:
      oldest = min(views, key=lambda pid: (views[pid], pid))
      del views[oldest]
  elif name == PRODUCT_ADDED and product_id is not None:
    _score(state, product_id, ADD_WEIGHT)
    state['cart'][product_id] = state['cart'].get(product_id, 0) + (event.get('quantity') or 1)
    _cart_changed(state, at, event.get('currency'))
  elif name == PRODUCT_REMOVED and product_id is not None:
    left = state['cart'].get(product_id, 0) - (event.get('quantity') or 1)
    if left > 0:
      state['cart'][product_id] = left
    else:
      state['cart'].pop(product_id, None)
    _cart_changed(state, at, event.get('currency'))
  elif name == ORDER_COMPLETED:
    _apply_order(state, event, properties, at)
  elif name == ORDER_CANCELLED and event.get('order_id') is not None:
    if event['order_id'] not in state['cancelled']:
      state['cancelled'].append(event['order_id'])
  elif name == EMAIL_OPENED:
    state['email_opened_at'] = _max(state['email_opened_at'], at)
  elif name == EMAIL_CLICKED:
    state['email_clicked_at'] = _max(state['email_clicked_at'], at)
  return state


def fold(customer_id: str, events: Iterable[dict]) -> dict:
  """Folds a customer's events in event-time order (ties by message id, so the result does not
  depend on input order)."""
  state = new_state(customer_id)
  for event in sorted(events, key=lambda e: (e['event_time'], e['message_id'])):
    apply(state, event)
  return state


# The parts of an event record that `apply` (hence `fold`) and `interacted_products` read.
_FOLD_FIELDS = ('message_id', 'event_time', 'type', 'event', 'email_sha256', 'product_id', 'price',
                'quantity', 'currency', 'order_id', 'total', 'revenue')
_FOLD_TRAITS = ('first_name', 'firstName', 'unsubscribed')
_FOLD_PROPERTIES = ('name', 'category', 'url', 'image_url')
_FOLD_LINE_FIELDS = ('product_id', 'price', 'quantity', 'name', 'category', 'url', 'image_url')


def fold_input(event: dict) -> dict:
  """An event record cut down to what `fold` and `interacted_products` read: folding the cut-down
  records gives the same state as folding the records (tests/unit/test_fold_input.py checks it
  on the sample data, the bad-input corpus and generated events).

  What the batch graph carries through its group by customer: about a third of an encoded event
  (no context, user agent, page or unused properties). Change it with `apply`.
  """
  slim = {name: event.get(name) for name in _FOLD_FIELDS}
  traits = event.get('traits')
  if isinstance(traits, dict):
    slim['traits'] = {name: traits[name] for name in _FOLD_TRAITS if name in traits}
  properties = event.get('properties')
  if isinstance(properties, dict):
    kept = {name: properties[name] for name in _FOLD_PROPERTIES if name in properties}
    if 'products' in properties:
      products = properties['products']
      kept['products'] = ([{name: line[name] for name in _FOLD_LINE_FIELDS if name in line}
                           if isinstance(line, dict) else line for line in products]
                          if isinstance(products, list) else products)
    slim['properties'] = kept
  return slim


def _apply_identify(state: dict, event: dict, at: int) -> None:
  traits = event.get('traits') if isinstance(event.get('traits'), dict) else {}
  first_name = traits.get('first_name') or traits.get('firstName')
  if isinstance(first_name, str) and first_name.strip():
    state['first_name'] = _newest(state['first_name'], at, first_name.strip())
  if isinstance(traits.get('unsubscribed'), bool):
    state['unsubscribed'] = _newest(state['unsubscribed'], at, traits['unsubscribed'])


def _apply_order(state: dict, event: dict, properties: dict, at: int) -> None:
  products = []
  lines_value = decimal.Decimal(0)
  for line in properties.get('products') or []:
    if not isinstance(line, dict) or line.get('product_id') is None:
      continue
    product_id = str(line['product_id'])
    price = _amount(line.get('price'))
    quantity = int(line.get('quantity') or 1)
    if price is not None:
      lines_value = _MONEY.add(lines_value, _MONEY.multiply(price, quantity))
    _remember_product(state, product_id, line, price)
    _score(state, product_id, ORDER_WEIGHT)
    products.append(product_id)
  value = _amount(event.get('total'))
  if value is None:
    value = _amount(event.get('revenue'))
  if value is None:
    value = lines_value
  order_id = event.get('order_id') or event['message_id']
  state['orders'][order_id] = {'at': at, 'value': value, 'currency': event.get('currency'),
                               'products': products}
  state['cart'] = {}
  _cart_changed(state, at, None)


def _remember_product(state: dict, product_id: str, fields: Mapping[str, Any],
                      price: decimal.Decimal | None) -> None:
  known = state['products'].setdefault(product_id, {})
  for name in ('name', 'category', 'url', 'image_url'):
    if isinstance(fields.get(name), str) and fields[name]:
      known[name] = fields[name]
  if price is not None:
    known['price'] = price


def _score(state: dict, product_id: str, weight: int) -> None:
  state['scores'][product_id] = state['scores'].get(product_id, 0) + weight


def _cart_changed(state: dict, at: int, currency: str | None) -> None:
  state['cart_updated_at'] = _max(state['cart_updated_at'], at)
  if currency:
    state['cart_currency'] = currency


def _newest(current: tuple | None, at: int, value: Any) -> tuple:
  return (at, value) if current is None or at >= current[0] else current


def _max(current: int | None, at: int) -> int:
  return at if current is None or at > current else current


def _amount(value: Any) -> decimal.Decimal | None:
  """A price or order amount the profile can use: a number >= 0, else None (unknown).

  Events may carry negative money (the contract allows +-10^15: refunds, discounts, client bugs),
  but a negative price is not what a product costs, and summing one would show a negative cart
  value or lifetime value. The fold ignores it, as if absent (an order then falls back to its
  revenue, then to the sum of its products).
  """
  amount = _decimal(value)
  return amount if amount is not None and amount >= 0 else None


def _decimal(value: Any) -> decimal.Decimal | None:
  if isinstance(value, decimal.Decimal):
    return value
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return decimal.Decimal(str(value))
  return None


# ---- rendering ---------------------------------------------------------------------------------


def suppressed(state: dict, customer: Mapping[str, Any] | None) -> bool:
  """Consent: no document when the CRM says email_opt_in is false, or the newest identify says
  unsubscribed."""
  if customer is not None and customer.get('email_opt_in') is False:
    return True
  return bool(state['unsubscribed'] and state['unsubscribed'][1])


def render(state: dict,
           reference_time: int,
           customer: Mapping[str, Any] | None = None,
           catalog: Mapping[str, Mapping[str, Any]] | None = None,
           recommender: 'Recommender | None' = None,
           settings: Settings = Settings()) -> dict | None:
  """The serving document, or None when the customer must not get one (consent).

  `customer` is the CRM record (transforms.rules.reference.parse_customer), `catalog` maps
  product_id to catalog records, `recommender` ranks catalog products by popularity. Times are
  aware datetimes (Firestore timestamps); money is rounded to cents. `updated_at` is not set here:
  the writer stamps it with the commit time.
  """
  if suppressed(state, customer):
    return None
  customer = customer or {}
  catalog = catalog or {}
  cart = _render_cart(state, reference_time, catalog, settings)
  orders = _render_orders(state)
  categories = top_categories(state, catalog)
  excluded = set(state['cart']) | {pid for order_id, order in state['orders'].items()
                                   if order_id not in state['cancelled']
                                   for pid in order['products']}
  return {
      'customer_id': state['customer_id'],
      'email_sha256': (state['email_sha256'][1] if state['email_sha256']
                       else customer.get('email_sha256')),
      'first_name': state['first_name'][1] if state['first_name'] else customer.get('first_name'),
      'country': customer.get('country'),
      'language': customer.get('language'),
      'loyalty_tier': customer.get('loyalty_tier'),
      'schema_version': SCHEMA_VERSION,
      'last_event_at': _time(state['last_event_at']),
      'recently_viewed': _render_views(state, catalog),
      'cart': cart,
      'orders': orders,
      'segment': segment(state, reference_time, settings),
      'top_categories': categories,
      'recommendations': (recommender.recommend(categories, excluded) if recommender else []),
      'engagement': {'last_email_open_at': _time(state['email_opened_at']),
                     'last_email_click_at': _time(state['email_clicked_at'])},
  }


def product_fields(state: dict, product_id: str,
                   catalog: Mapping[str, Mapping[str, Any]]) -> dict:
  """A product as the document shows it: catalog fields first, the events' as the fallback
  (price rounded to cents)."""
  merged = _product(state, product_id, catalog)
  if merged['price'] is not None:
    merged['price'] = money(merged['price'])
  return merged


def _product(state: dict, product_id: str, catalog) -> dict:
  from_events = state['products'].get(product_id, {})
  from_catalog = catalog.get(product_id) or {}
  merged = {}
  for name in _PRODUCT_FIELDS:
    value = from_catalog.get(name)
    merged[name] = value if value is not None else from_events.get(name)
  return merged


def _render_views(state: dict, catalog) -> list[dict]:
  views = sorted(state['views'].items(), key=lambda item: (-item[1], item[0]))
  return [{'product_id': product_id, **product_fields(state, product_id, catalog),
           'viewed_at': _time(at)} for product_id, at in views[:MAX_RECENTLY_VIEWED]]


def _render_cart(state: dict, reference_time: int, catalog, settings: Settings) -> dict:
  items, value = [], decimal.Decimal(0)
  currency = state['cart_currency']
  for product_id, quantity in sorted(state['cart'].items()):
    fields = _product(state, product_id, catalog)
    price = _decimal(fields['price'])
    if price is not None:
      value = _MONEY.add(value, _MONEY.multiply(price, quantity))  # rounded once, on the total
    items.append({'product_id': product_id, 'name': fields['name'],
                  'price': None if price is None else money(price), 'quantity': quantity})
    if currency is None:
      currency = (catalog.get(product_id) or {}).get('currency')
  updated = state['cart_updated_at']
  abandoned = bool(items) and updated is not None and (
      reference_time - updated > settings.cart_abandon_minutes * _MICROS_PER_MINUTE)
  return {'items': items, 'item_count': sum(q for q in state['cart'].values()),
          'value': money(value), 'currency': currency or 'USD', 'updated_at': _time(updated),
          'abandoned': abandoned}


def _live_orders(state: dict) -> list[tuple[str, dict]]:
  return [(order_id, order) for order_id, order in state['orders'].items()
          if order_id not in state['cancelled']]


def _render_orders(state: dict) -> dict:
  orders = _live_orders(state)
  if not orders:
    return {'count': 0, 'lifetime_value': 0.0, 'last_order_id': None, 'last_order_at': None,
            'currency': None}
  last_id, last = max(orders, key=lambda item: (item[1]['at'], item[0]))
  return {'count': len(orders),
          'lifetime_value': money(_sum(o['value'] for _, o in orders)),
          'last_order_id': last_id, 'last_order_at': _time(last['at']),
          'currency': last['currency'] or 'USD'}


def segment(state: dict, reference_time: int, settings: Settings = Settings()) -> str:
  """vip, at_risk, active or prospect (docs/DATA_CONTRACT.md)."""
  orders = _live_orders(state)
  if not orders:
    return 'prospect'
  lifetime = _sum(o['value'] for _, o in orders)
  if lifetime >= settings.vip_lifetime_value or len(orders) >= settings.vip_order_count:
    return 'vip'
  last_at = max(o['at'] for _, o in orders)
  if reference_time - last_at > settings.at_risk_days * _MICROS_PER_DAY:
    return 'at_risk'
  return 'active'


def top_categories(state: dict, catalog) -> list[str]:
  """Up to 3 categories by weighted interactions (view 1, add 3, order 5), ties by name."""
  weights: dict[str, int] = {}
  for product_id, score in state['scores'].items():
    category = _product(state, product_id, catalog)['category']
    if category:
      weights[category] = weights.get(category, 0) + score
  ranked = sorted(weights.items(), key=lambda item: (-item[1], item[0]))
  return [category for category, _ in ranked[:MAX_TOP_CATEGORIES]]


def money(value: Any) -> float:
  """Money for the document: rounded half-even to cents, as a number (never -0.0, which an email
  would show as "-0.00")."""
  amount = decimal.Decimal(str(value)).quantize(_CENT, rounding=decimal.ROUND_HALF_EVEN,
                                                context=_MONEY)
  return float(amount.copy_abs() if amount.is_zero() else amount)


def _sum(amounts: Iterable[decimal.Decimal]) -> decimal.Decimal:
  total = decimal.Decimal(0)
  for amount in amounts:
    total = _MONEY.add(total, amount)
  return total


def _time(micros: int | None):
  return None if micros is None else schemas.micros_to_datetime(micros)


# ---- popularity and recommendations -------------------------------------------------------------


def interacted_products(event: dict) -> list[str]:
  """Products an event shows interest in (viewed, added to cart, bought): popularity counts the
  distinct customers per product over these."""
  name = event_name(event)
  if name in (PRODUCT_VIEWED, PRODUCT_ADDED) and event.get('product_id') is not None:
    return [event['product_id']]
  if name == ORDER_COMPLETED:
    properties = event.get('properties') if isinstance(event.get('properties'), dict) else {}
    return sorted({str(line['product_id']) for line in properties.get('products') or []
                   if isinstance(line, dict) and line.get('product_id') is not None})
  return []


class Recommender:
  """Ranks in-stock catalog products by popularity (ties by product_id), per category and overall.

  Built once per catalog and popularity snapshot; `recommend` then walks the ranked lists.
  """

  def __init__(self, catalog: Mapping[str, Mapping[str, Any]], popularity: Mapping[str, int]):
    in_stock = [p for p in catalog.values() if p.get('in_stock')]
    ranked = sorted(in_stock, key=lambda p: (-popularity.get(p['product_id'], 0), p['product_id']))
    self._overall = ranked
    self._rank = {p['product_id']: i for i, p in enumerate(ranked)}
    self._by_category: dict[str, list] = {}
    for product in ranked:
      if product.get('category'):
        self._by_category.setdefault(product['category'], []).append(product)

  def recommend(self, categories: list[str], excluded: set[str],
                limit: int = MAX_RECOMMENDATIONS) -> list[dict]:
    """Up to `limit` products from `categories` (most popular first), then from the most popular
    overall, skipping `excluded` (bought or in the cart)."""
    chosen: list[dict] = []
    seen = set(excluded)
    # Each category's list is already ranked: merge them lazily instead of sorting.
    candidates = heapq.merge(*(self._by_category.get(c, []) for c in categories),
                             key=lambda p: self._rank[p['product_id']])
    for product in candidates:
      if len(chosen) == limit:
        break
      if product['product_id'] not in seen:
        seen.add(product['product_id'])
        chosen.append(_recommendation(product, f'popular in {product["category"]}'))
    for product in self._overall:
      if len(chosen) == limit:
        break
      if product['product_id'] not in seen:
        seen.add(product['product_id'])
        chosen.append(_recommendation(product, 'popular now'))
    return chosen


def _recommendation(product: Mapping[str, Any], reason: str) -> dict:
  return {'product_id': product['product_id'], 'name': product.get('name'),
          'price': None if product.get('price') is None else money(product['price']),
          'url': product.get('url'), 'image_url': product.get('image_url'), 'reason': reason}
