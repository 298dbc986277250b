"""Product popularity and recommendations. Pure functions, no Beam.

`interacted_products(event)` is what popularity counts (distinct customers per product); the
`Recommender` ranks in-stock catalog products by that popularity for `render`.
"""
from __future__ import annotations

import heapq
from typing import Any, Mapping

from transforms.rules.profile.fold import (ORDER_COMPLETED, PRODUCT_ADDED, PRODUCT_VIEWED,
                                           event_name)
from transforms.rules.profile.render import money

MAX_RECOMMENDATIONS = 4


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
