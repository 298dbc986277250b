"""What one event contributes to the hourly activity aggregate. Pure functions, no Beam."""
from __future__ import annotations

import decimal

from transforms.rules.profile import event_name

ORDER_COMPLETED = 'Order Completed'


def activity_key(event: dict) -> tuple[str, bool, str, str | None] | None:
  """(customer_id, identified, event_name, currency), or None for an event with no id at all.

  The currency is an order's, and only when the order has a value (`revenue`): a row shows its
  currency only with a revenue, so an order without one counts in the row without currency, and
  no two rows of an hour, customer and name show the same key (the key batch loads merge on,
  transforms/rules/loads.py)."""
  customer = event.get('user_id') or event.get('anonymous_id')
  if not customer:
    return None
  currency = event.get('currency') if revenue(event) is not None else None
  return customer, bool(event.get('user_id')), event_name(event), currency


def revenue(event: dict) -> decimal.Decimal | None:
  """An order's value: `total` (revenue with shipping and tax), else `revenue`; None otherwise."""
  if event_name(event) != ORDER_COMPLETED:
    return None
  value = event.get('total')
  return value if value is not None else event.get('revenue')


def add(left: tuple[int, decimal.Decimal | None], right: tuple[int, decimal.Decimal | None]):
  """Sums (count, revenue) pairs; revenue stays None until some event has one."""
  count = left[0] + right[0]
  if left[1] is None:
    return count, right[1]
  if right[1] is None:
    return count, left[1]
  return count, left[1] + right[1]
