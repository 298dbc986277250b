"""The profile fold: `new_state(customer_id)`, then `apply(state, event)` per event. Pure, no Beam.

The fold does not depend on arrival order: folding a customer's events in any order (exact
duplicates dropped upstream) gives the state that folding them by event time gives. Each rule is
either set-like (a maximum, a sum, a dict keyed by id) or keeps what it needs to re-sort:
- "newest wins" fields keep the event-time key `(event_time, message_id)` of their value and are
  replaced only by a newer key, never by a later arrival;
- the cart keeps its operations since the newest `Order Completed`, sorted by that key, and is
  the replay of them (an order empties only what the cart held at its event time).
State per customer is bounded by `MAX_CART_OPS` cart operations since the last order (older ones
are compacted into a base cart, docs/DATA_CONTRACT.md says what that costs), the 10 newest views,
and one entry per distinct product and order the customer touched. Times are epoch microseconds.
"""
from __future__ import annotations

import decimal
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from transforms.rules.profile.cart import cart_operation, empty_cart

if TYPE_CHECKING:
  from transforms.rules.audiences.evaluate import Evaluator

PRODUCT_VIEWED = 'Product Viewed'
PRODUCT_ADDED = 'Product Added'
PRODUCT_REMOVED = 'Product Removed'
ORDER_COMPLETED = 'Order Completed'
ORDER_CANCELLED = 'Order Cancelled'
EMAIL_OPENED = 'Email Opened'
EMAIL_CLICKED = 'Email Link Clicked'
# Call types. A screen (a mobile app's view) counts as a page view wherever views are counted.
PAGE, SCREEN = 'page', 'screen'

# Interaction weights for top_categories.
VIEW_WEIGHT, ADD_WEIGHT, ORDER_WEIGHT = 1, 3, 5
MAX_RECENTLY_VIEWED = 10
PRODUCT_FIELDS = ('name', 'category', 'url', 'image_url')
# Money arithmetic. Decimal's default 28 digits cannot round a cart line at the contract's maximum
# price (10^15) and a large quantity to cents (quantize raises InvalidOperation) and would round
# products silently; 60 digits keep every sum exact.
MONEY = decimal.Context(prec=60)


def event_name(event: dict) -> str:
  """The name an event is counted under: the track event name, else the call type, `page` for a
  screen. Group and alias calls count under their type and fold like any event (the time and
  email every event carries), an alias having linked its ids before the fold
  (transforms.rules.identity)."""
  call_type = event['type']
  if call_type == 'track' and event.get('event'):
    return event['event']
  return PAGE if call_type == SCREEN else call_type


def new_state(customer_id: str) -> dict:
  return {
      'customer_id': customer_id,
      'last_event_at': None,
      # "Newest wins" registers: (event_time, message_id, value) of the newest event that set it.
      'email_sha256': None,     # from any event carrying an email
      'first_name': None,       # identify traits.first_name / firstName
      'unsubscribed': None,     # identify traits.unsubscribed
      'views': {},              # product_id -> newest view time (the newest MAX_RECENTLY_VIEWED)
      'products': {},           # product_id -> {field: (event_time, message_id, value)}
      'scores': {},             # product_id -> weighted interactions
      'cart': {},               # product_id -> quantity: the replay of cart_base + cart_ops
      'cart_ops': [],           # sorted (event_time, message_id, product_id, delta) since the floor
      'cart_base': {},          # the cart at cart_compacted (empty unless ops were compacted)
      'cart_compacted': None,   # key of the newest compacted operation
      'cart_reset': None,       # key of the newest Order Completed (it emptied the cart)
      'cart_updated_at': None,  # newest add, remove or order time
      'cart_currency': None,    # register: the newest add or remove carrying a currency
      'orders': {},             # order_id -> {'at', 'message_id', 'value', 'currency', 'products'}
      'cancelled': set(),       # order ids cancelled (even before they were seen completed)
      'email_opened_at': None,
      'email_clicked_at': None,
      'traits': {},             # computed trait key -> its state (transforms/rules/audiences)
  }


def upgraded(state: dict) -> dict:
  """A state stored by an earlier version of the fold (streaming state kept across an in-place
  update), in today's shape. Its values keep no message id (an empty one sorts first) and its
  product fields no time, so any new event replaces them; its cart becomes the compacted base."""
  state.setdefault('traits', {})
  if 'cart_ops' in state:
    return state
  for name in ('email_sha256', 'first_name', 'unsubscribed'):
    if state.get(name) is not None:
      state[name] = (state[name][0], '', state[name][1])
  state['products'] = {pid: {name: (-1, '', value) for name, value in fields.items()}
                       for pid, fields in state['products'].items()}
  updated = state['cart_updated_at']
  currency = state.pop('cart_currency', None)
  state['cart_currency'] = None if currency is None else (updated or 0, '', currency)
  state['cart_base'] = dict(state['cart'])
  state['cart_compacted'] = (updated, '') if state['cart'] and updated is not None else None
  state['cart_ops'] = []
  for order in state['orders'].values():
    order.setdefault('message_id', '')
  newest_order = max((order['at'] for order in state['orders'].values()), default=None)
  state['cart_reset'] = None if newest_order is None else (newest_order, '')
  state['cancelled'] = set(state['cancelled'])
  return state


def apply(state: dict, event: dict, audiences: 'Evaluator | None' = None,
          catalog: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
  """Folds one event into the profile state (updated in place and returned: the fold owns it).
  With `audiences` (a definitions file), the computed traits the event feeds too; `catalog` is
  what their `product` variable reads."""
  at = event['event_time']
  key = (at, event['message_id'])
  if state['last_event_at'] is None or at > state['last_event_at']:
    state['last_event_at'] = at
  if event.get('email_sha256'):
    state['email_sha256'] = newest(state['email_sha256'], key, event['email_sha256'])
  name = event_name(event)
  if audiences is not None:
    for trait_key, value in audiences.inputs(event, name, catalog):
      audiences.add(state['traits'], trait_key, at, key[1], value)
  if event['type'] == 'identify':
    _apply_identify(state, event, key)
    return state
  properties = event.get('properties') if isinstance(event.get('properties'), dict) else {}
  product_id = event.get('product_id')
  if product_id is not None and name in (PRODUCT_VIEWED, PRODUCT_ADDED, PRODUCT_REMOVED):
    _remember_product(state, product_id, properties, amount(event.get('price')), key)
  if name == PRODUCT_VIEWED and product_id is not None:
    _score(state, product_id, VIEW_WEIGHT)
    _view(state['views'], product_id, at)
  elif name in (PRODUCT_ADDED, PRODUCT_REMOVED) and product_id is not None:
    quantity = event.get('quantity') or 1
    if name == PRODUCT_ADDED:
      _score(state, product_id, ADD_WEIGHT)
    cart_operation(state, key, product_id, quantity if name == PRODUCT_ADDED else -quantity)
    if event.get('currency'):
      state['cart_currency'] = newest(state['cart_currency'], key, event['currency'])
  elif name == ORDER_COMPLETED:
    _apply_order(state, event, properties, key)
  elif name == ORDER_CANCELLED and event.get('order_id') is not None:
    state['cancelled'].add(event['order_id'])
  elif name == EMAIL_OPENED and not machine(properties):
    state['email_opened_at'] = _max(state['email_opened_at'], at)
  elif name == EMAIL_CLICKED and not machine(properties):
    state['email_clicked_at'] = _max(state['email_clicked_at'], at)
  return state


def machine(properties: Mapping[str, Any]) -> bool:
  """Whether an email event is a machine's (an image proxy, Apple Mail Privacy Protection, a link
  scanner: transforms.rules.machine): `properties.machine` true, or the text "true" a pixel's
  query string or an ESP's webhook may carry. Kept in the warehouse, never engagement."""
  flag = properties.get('machine')
  return flag is True or (isinstance(flag, str) and flag.strip().lower() == 'true')


def fold(customer_id: str, events: Iterable[dict], audiences: 'Evaluator | None' = None,
         catalog: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
  """Folds a customer's events. In event-time order (ties by message id): the result is the same
  in any order, but sorted input never needs the cart's compaction to be exact."""
  state = new_state(customer_id)
  for event in sorted(events, key=lambda e: (e['event_time'], e['message_id'])):
    apply(state, event, audiences, catalog)
  return state


def newest(current: tuple | None, key: tuple[int, str], value: Any) -> tuple:
  """The "newest wins" rule: `(event_time, message_id, value)` of the newer key. An equal key is
  the same event (a later product line of one order, a redelivered copy): it replaces."""
  return (*key, value) if current is None or key >= current[:2] else current


def _view(views: dict, product_id: str, at: int) -> None:
  # Keeping the newest N by (time, product_id) is order-insensitive: an evicted product only
  # comes back with a view newer than the Nth newest kept, which is then its newest view.
  views[product_id] = max(at, views.get(product_id, at))
  if len(views) > MAX_RECENTLY_VIEWED:
    oldest = min(views, key=lambda pid: (views[pid], pid))
    del views[oldest]


def _apply_identify(state: dict, event: dict, key: tuple[int, str]) -> None:
  traits = event.get('traits') if isinstance(event.get('traits'), dict) else {}
  first_name = traits.get('first_name') or traits.get('firstName')
  if isinstance(first_name, str) and first_name.strip():
    state['first_name'] = newest(state['first_name'], key, first_name.strip())
  if isinstance(traits.get('unsubscribed'), bool):
    state['unsubscribed'] = newest(state['unsubscribed'], key, traits['unsubscribed'])


def _apply_order(state: dict, event: dict, properties: dict, key: tuple[int, str]) -> None:
  products = []
  lines_value = decimal.Decimal(0)
  for line in properties.get('products') or []:
    if not isinstance(line, dict) or line.get('product_id') is None:
      continue
    product_id = str(line['product_id'])
    price = amount(line.get('price'))
    quantity = int(line.get('quantity') or 1)
    if price is not None:
      lines_value = MONEY.add(lines_value, MONEY.multiply(price, quantity))
    _remember_product(state, product_id, line, price, key)
    _score(state, product_id, ORDER_WEIGHT)
    products.append(product_id)
  value = amount(event.get('total'))
  if value is None:
    value = amount(event.get('revenue'))
  if value is None:
    value = lines_value
  order_id = event.get('order_id') or event['message_id']
  known = state['orders'].get(order_id)
  if known is None or key >= (known['at'], known['message_id']):
    state['orders'][order_id] = {'at': key[0], 'message_id': key[1], 'value': value,
                                 'currency': event.get('currency'), 'products': products}
  empty_cart(state, key)


def _remember_product(state: dict, product_id: str, fields: Mapping[str, Any],
                      price: decimal.Decimal | None, key: tuple[int, str]) -> None:
  known = state['products'].setdefault(product_id, {})
  for name in PRODUCT_FIELDS:
    if isinstance(fields.get(name), str) and fields[name]:
      known[name] = newest(known.get(name), key, fields[name])
  if price is not None:
    known['price'] = newest(known.get('price'), key, price)


def _score(state: dict, product_id: str, weight: int) -> None:
  state['scores'][product_id] = state['scores'].get(product_id, 0) + weight


def _max(current: int | None, at: int) -> int:
  return at if current is None or at > current else current


def amount(value: Any) -> decimal.Decimal | None:
  """A price or order amount the profile can use: a number >= 0, else None (unknown).

  Events may carry negative money (the contract allows +-10^15: refunds, discounts, client bugs),
  but a negative price is not what a product costs, and summing one would show a negative cart
  value or lifetime value. The fold ignores it, as if absent (an order then falls back to its
  revenue, then to the sum of its products).
  """
  value = to_decimal(value)
  return value if value is not None and value >= 0 else None


def to_decimal(value: Any) -> decimal.Decimal | None:
  if isinstance(value, decimal.Decimal):
    return value
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return decimal.Decimal(str(value))
  return None


# The parts of an event record that `apply` (hence `fold`) and `interacted_products` read.
_FOLD_FIELDS = ('message_id', 'event_time', 'type', 'event', 'email_sha256', 'product_id', 'price',
                'quantity', 'currency', 'order_id', 'total', 'revenue')
_FOLD_TRAITS = ('first_name', 'firstName', 'unsubscribed')
_FOLD_PROPERTIES = ('name', 'category', 'url', 'image_url', 'machine')
_FOLD_LINE_FIELDS = ('product_id', 'price', 'quantity', 'name', 'category', 'url', 'image_url')


def fold_input(event: dict, whole: bool = False) -> dict:
  """An event record cut down to what `fold` and `interacted_products` read: folding the cut-down
  records gives the same state as folding the records (tests/unit/test_fold_input.py checks it
  on the sample data, the bad-input corpus and generated events). What the batch graph carries
  through its group by customer. Change it with `apply`. `whole`: with computed traits, whose
  expressions may read any property or trait, those two are kept whole.
  """
  slim = {name: event.get(name) for name in _FOLD_FIELDS}
  if whole:  # computed traits' expressions may read any property or trait
    slim['properties'], slim['traits'] = event.get('properties'), event.get('traits')
    return slim
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
