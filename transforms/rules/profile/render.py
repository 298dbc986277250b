"""The serving document rendered from a profile state (`customers/{customer_id}`,
docs/DATA_CONTRACT.md). Pure functions, no Beam.

`render(state, reference_time, ...)` joins the state with the CRM row, the catalog and the
recommender; `cart_abandoned_from(state, settings)` is the one cart-abandonment rule, used by the
render (batch and streaming) and by the streaming timer that re-renders a cart when it becomes
abandoned.
"""
from __future__ import annotations

import dataclasses
import decimal
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import schemas
from transforms.rules import checks
from transforms.rules.holdout import Holdout
from transforms.rules.profile.fold import MONEY, to_decimal

if TYPE_CHECKING:
  from transforms.rules.audiences.evaluate import Evaluator
  from transforms.rules.profile.recommendations import Recommender

SCHEMA_VERSION = 1
MAX_TOP_CATEGORIES = 3
_CENT = decimal.Decimal('0.01')
_MICROS_PER_MINUTE = 60 * 1_000_000
_MICROS_PER_DAY = 24 * 60 * _MICROS_PER_MINUTE
_PRODUCT_FIELDS = ('name', 'category', 'price', 'url', 'image_url')


@dataclasses.dataclass(frozen=True)
class Settings:
  """The tunable rules, checked once when built (the first two are pipeline options of the same
  names, and their messages name the option)."""
  cart_abandon_minutes: float = 60
  vip_lifetime_value: decimal.Decimal = decimal.Decimal(500)
  vip_order_count: int = 5
  at_risk_days: float = 90
  holdout: Holdout = Holdout()
  # Computed traits and audiences (--audiences: transforms/rules/audiences); None: none defined.
  audiences: 'Evaluator | None' = None

  def __post_init__(self):
    checks.positive(self.cart_abandon_minutes, '--cart_abandon_minutes')
    vip = decimal.Decimal(self.vip_lifetime_value)
    if not vip.is_finite() or vip < 0:  # NaN cannot even be compared
      raise ValueError(f'--vip_lifetime_value must be a number, zero or more, got '
                       f'{self.vip_lifetime_value}')
    if self.vip_order_count < 1:
      raise ValueError(f'vip_order_count must be at least 1, got {self.vip_order_count}')
    checks.positive(self.at_risk_days, 'at_risk_days')

  @property
  def cart_abandon_micros(self) -> int:
    """Whole microseconds a cart may rest: it is abandoned once it rested strictly longer."""
    return int(self.cart_abandon_minutes * _MICROS_PER_MINUTE)


def cart_abandoned_from(state: dict, settings: Settings) -> int | None:
  """The first reference time (epoch micros) at which the cart counts as abandoned: it has items
  and its last change is more than `cart_abandon_minutes` older. None for an empty cart."""
  updated = state['cart_updated_at']
  if not state['cart'] or updated is None:
    return None
  return updated + settings.cart_abandon_micros + 1


def suppressed(state: dict, customer: Mapping[str, Any] | None) -> bool:
  """Consent: no document when the CRM says email_opt_in is false, or the newest identify says
  unsubscribed."""
  if customer is not None and customer.get('email_opt_in') is False:
    return True
  return bool(state['unsubscribed'] and state['unsubscribed'][-1])


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
  document = {
      'customer_id': state['customer_id'],
      'email_sha256': (state['email_sha256'][-1] if state['email_sha256']
                       else customer.get('email_sha256')),
      'first_name': (state['first_name'][-1] if state['first_name']
                     else customer.get('first_name')),
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
      'holdout': settings.holdout.held_out(state['customer_id']),
      'traits': {},
      'audiences': [],
  }
  if settings.audiences is not None:
    document['traits'] = settings.audiences.results(state['traits'], reference_time)
    document['audiences'] = settings.audiences.audiences(document, document['traits'])
  return document


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
    if value is None and name in from_events:
      value = from_events[name][-1]
    merged[name] = value
  return merged


def _render_views(state: dict, catalog) -> list[dict]:
  views = sorted(state['views'].items(), key=lambda item: (-item[1], item[0]))
  return [{'product_id': product_id, **product_fields(state, product_id, catalog),
           'viewed_at': _time(at)} for product_id, at in views]


def _render_cart(state: dict, reference_time: int, catalog, settings: Settings) -> dict:
  items, value = [], decimal.Decimal(0)
  currency = state['cart_currency'][-1] if state['cart_currency'] else None
  for product_id, quantity in sorted(state['cart'].items()):
    fields = _product(state, product_id, catalog)
    price = to_decimal(fields['price'])
    if price is not None:
      value = MONEY.add(value, MONEY.multiply(price, quantity))  # rounded once, on the total
    items.append({'product_id': product_id, 'name': fields['name'],
                  'price': None if price is None else money(price), 'quantity': quantity})
    if currency is None:
      currency = (catalog.get(product_id) or {}).get('currency')
  abandoned_from = cart_abandoned_from(state, settings)
  return {'items': items, 'item_count': sum(q for q in state['cart'].values()),
          'value': money(value), 'currency': currency or 'USD',
          'updated_at': _time(state['cart_updated_at']),
          'abandoned': abandoned_from is not None and reference_time >= abandoned_from}


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
                                                context=MONEY)
  return float(amount.copy_abs() if amount.is_zero() else amount)


def _sum(amounts: Iterable[decimal.Decimal]) -> decimal.Decimal:
  total = decimal.Decimal(0)
  for amount in amounts:
    total = MONEY.add(total, amount)
  return total


def _time(micros: int | None):
  return None if micros is None else schemas.micros_to_datetime(micros)
