"""ESP destinations: each vendor's wire format for pushing changed customer attributes, as pure
functions (no I/O, no threads). `make(type, options)` builds one adapter from the connector's
config; the worker sends its requests and acts on its verdicts. See docs/DESTINATIONS.md.
"""
from __future__ import annotations

from typing import Mapping

from connector.destinations import braze, iterable, klaviyo
from connector.destinations.base import (ACCEPTED, FOLLOW_UP, NAME_ONLY, PERMANENT, RETRY, Item,
                                         ItemProblem, ItemTooLarge, Request, Vendor, Verdict)

TYPES = {'braze': braze.make, 'klaviyo': klaviyo.make, 'iterable': iterable.make}

__all__ = ['ACCEPTED', 'FOLLOW_UP', 'NAME_ONLY', 'PERMANENT', 'RETRY', 'Item', 'ItemProblem',
           'ItemTooLarge', 'Request', 'TYPES', 'Vendor', 'Verdict', 'make']


def make(type: str, options: Mapping | None = None) -> Vendor:  # noqa: A002 (the config's word)
  """The adapter for `type` ('braze', 'klaviyo', 'iterable') with its validated `options`; raises
  ValueError naming the unknown type, an unknown option or a bad value."""
  if type not in TYPES:
    raise ValueError(f'unknown destination type {type!r} (known: {", ".join(sorted(TYPES))})')
  return TYPES[type]({} if options is None else options)
