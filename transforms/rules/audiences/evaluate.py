"""Definitions applied to a customer: which traits an event feeds, the traits at a reference time,
the audiences a document is in. Pure, no Beam; the profile fold and render call these
(transforms/rules/profile), the same in batch and streaming.

A trait's `event` names what it counts: a track event's name (`Order Completed`), or a call type
(`identify`, `page`, `screen`, `group`, `alias`). `page` takes screen calls too, as every view
count of the profile does; `screen` only screens.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from transforms.rules.audiences import expressions, traits
from transforms.rules.audiences.definitions import Definitions, TraitDefinition

_SCREEN, _PAGE = 'screen', 'page'


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """A checked definitions file, indexed for the fold. Pickles with its definitions."""
  definitions: Definitions

  def __post_init__(self):
    by_event: dict[str, list[TraitDefinition]] = {}
    for trait in self.definitions.traits:
      by_event.setdefault(trait.event, []).append(trait)
    object.__setattr__(self, '_by_event', {k: tuple(v) for k, v in by_event.items()})
    object.__setattr__(self, '_kinds', {t.key: t for t in self.definitions.traits})

  def __reduce__(self):
    return (Evaluator, (self.definitions,))

  def matching(self, event: Mapping[str, Any]) -> tuple[TraitDefinition, ...]:
    """The traits whose `event` names this event (before `where`)."""
    call_type = event.get('type')
    if call_type == 'track':
      return self._by_event.get(event.get('event') or '', ())
    found = self._by_event.get(call_type, ())
    if call_type == _SCREEN:
      found = found + self._by_event.get(_PAGE, ())
    return found

  def inputs(self, event: Mapping[str, Any], name: str,
             catalog: Mapping[str, Mapping[str, Any]] | None) -> list[tuple[str, Any]]:
    """(trait key, value) for each trait the event feeds: its `event` matches and its `where`
    holds; the value is the definition's `value` (None for count, or when it gives none)."""
    candidates = self.matching(event)
    if not candidates:
      return []
    product_id = event.get('product_id')
    product = (catalog or {}).get(product_id) if product_id is not None else None
    activation = expressions.event_activation(event, name, product)
    found = []
    for trait in candidates:
      if trait.where is not None and not trait.where.test(activation):
        continue
      found.append((trait.key, None if trait.value is None else trait.value.value(activation)))
    return found

  def add(self, states: dict, key: str, event_time: int, message_id: str, value: Any) -> None:
    """Folds one input into `states` (trait key -> state), creating the state when new."""
    trait = self._kinds.get(key)
    if trait is None:  # a state stored under definitions that no longer have this trait
      return
    state = states.get(key)
    if state is None or not traits.fits(state, trait.kind, trait.within_days):
      # New, or kept (streaming state) from an earlier definition of this key: start again.
      state = states[key] = traits.new_state(trait.kind, trait.within_days is not None,
                                             trait.within_days)
    traits.add(state, trait.kind, event_time, message_id, value)

  def results(self, states: Mapping[str, dict], reference: int) -> dict[str, Any]:
    """Every trait's value at `reference`: its empty value (0, [] or None) when no event fed it.
    A trait whose value is None is left out of the map (absent, as CEL then sees it)."""
    out = {}
    for trait in self.definitions.traits:
      state = states.get(trait.key)
      if state is None or not traits.fits(state, trait.kind, trait.within_days):
        state = traits.new_state(trait.kind, trait.within_days is not None, trait.within_days)
      value = traits.result(state, trait.kind, reference, trait.within_days)
      if value is not None:
        out[trait.key] = value
    return out

  def audiences(self, document: Mapping[str, Any], trait_values: Mapping[str, Any]) -> list[str]:
    """The sorted keys of the audiences whose `when` holds for the document and its traits."""
    activation = expressions.document_activation(document, trait_values)
    return sorted(a.key for a in self.definitions.audiences if a.when.test(activation))

  def next_change(self, states: Mapping[str, dict], reference: int) -> int | None:
    """The earliest time after `reference` at which a windowed trait changes as its events age
    out (when the streaming fold re-renders), or None."""
    times = [traits.next_change(states[t.key], t.kind, t.within_days, reference)
             for t in self.definitions.traits if t.within_days is not None and t.key in states
             and traits.fits(states[t.key], t.kind, t.within_days)]
    times = [t for t in times if t is not None]
    return min(times) if times else None
