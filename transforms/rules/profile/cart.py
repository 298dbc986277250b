"""The cart as a fold: its operations since the newest `Order Completed`, sorted by event time.
Pure functions, no Beam.

`state['cart']` is always the replay of `cart_base` plus `cart_ops`, so the cart an event-time
ordered fold builds is built whatever the arrival order: an add or remove is inserted at its place
(`(event_time, message_id)`), and an order empties only the operations before it. At most
`MAX_CART_OPS` operations are kept one by one; past that the older half is compacted into
`cart_base` (docs/DATA_CONTRACT.md, "Order of events", says what that costs).
"""
from __future__ import annotations

import bisect

# Cart operations kept since the newest order; past it the older half is compacted into a base.
MAX_CART_OPS = 100


def _max(current: int | None, at: int) -> int:
  return at if current is None or at > current else current


def empty_cart(state: dict, key: tuple[int, str]) -> None:
  """An order at `key` empties what the cart held at that time: operations before it go, later
  ones stay (a late old order never empties a cart built after it)."""
  state['cart_updated_at'] = _max(state['cart_updated_at'], key[0])
  if state['cart_reset'] is not None and key <= state['cart_reset']:
    return  # an older order: the newer one already emptied everything before it
  state['cart_reset'] = key
  compacted = state['cart_compacted']
  if compacted is not None and key < compacted:
    # Past the bound: the compacted base mixes operations before and after this order, and only
    # the operations kept one by one can still be placed around it (docs/DATA_CONTRACT.md).
    ops = state['cart_ops']
  else:
    state['cart_base'], state['cart_compacted'] = {}, None
    ops = state['cart_ops'] = [op for op in state['cart_ops'] if op[:2] > key]
  state['cart'] = _replay(state['cart_base'], ops)


def cart_operation(state: dict, key: tuple[int, str], product_id: str, delta: int) -> None:
  """Adds (delta > 0) or removes (delta < 0) `product_id` at `key`, in event-time order."""
  state['cart_updated_at'] = _max(state['cart_updated_at'], key[0])
  if state['cart_reset'] is not None and key < state['cart_reset']:
    return  # before the newest order, which emptied the cart
  compacted = state['cart_compacted']
  if compacted is not None and key <= compacted:
    # Older than the compacted operations: applied onto the base, out of order (the one case
    # where arrival order shows: more than MAX_CART_OPS operations since the last order).
    _change(state['cart_base'], product_id, delta)
    state['cart'] = _replay(state['cart_base'], state['cart_ops'])
    return
  ops = state['cart_ops']
  op = (key[0], key[1], product_id, delta)
  at = bisect.bisect_left(ops, op)
  if at < len(ops) and ops[at][:2] == key:
    return  # the same event again
  ops.insert(at, op)
  if at == len(ops) - 1:
    _change(state['cart'], product_id, delta)  # the newest operation: no replay needed
  else:
    state['cart'] = _replay(state['cart_base'], ops)
  if len(ops) > MAX_CART_OPS:
    cut = len(ops) - MAX_CART_OPS // 2
    state['cart_base'] = _replay(state['cart_base'], ops[:cut])
    state['cart_compacted'] = ops[cut - 1][:2]
    del ops[:cut]


def _replay(base: dict, ops: list) -> dict:
  cart = dict(base)
  for _, _, product_id, delta in ops:
    _change(cart, product_id, delta)
  return cart


def _change(cart: dict, product_id: str, delta: int) -> None:
  """An item at 0 or below disappears."""
  left = cart.get(product_id, 0) + delta
  if left > 0:
    cart[product_id] = left
  else:
    cart.pop(product_id, None)
