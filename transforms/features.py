"""Per-customer features: the profile fold applied to each customer's events."""
from __future__ import annotations

import apache_beam as beam
from apache_beam import coders
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from transforms.rules import profile


def _key_by_customer(event):
  return event['user_id'], event


def _fold_group(element):
  customer_id, events = element
  return customer_id, profile.render(profile.fold(customer_id, events))


class _FoldInStateFn(beam.DoFn):
  """Streaming: the profile state lives in per-customer state; each event is folded in as it
  comes and the new document is emitted. Same rules as the batch fold (transforms.rules.profile)."""
  PROFILE = ReadModifyWriteStateSpec('profile', coders.PickleCoder())

  def process(self, element, stored=beam.DoFn.StateParam(PROFILE)):
    customer_id, event = element
    state = stored.read() or profile.new_state(customer_id)
    profile.apply(state, event)
    stored.write(state)
    yield customer_id, profile.render(state)


class BuildProfiles(beam.PTransform):
  """Folds each identified customer's events into a serving document.

  Input: deduplicated event records in the global window. Events without a `user_id` are
  anonymous and produce no document. Output: `(customer_id, document)` pairs, the document as
  `transforms.rules.profile.render` returns it. Batch groups each customer's events and folds them
  once; streaming keeps the fold's state per customer and emits an updated document per event.
  """

  def __init__(self, streaming: bool = False):
    super().__init__()
    self._streaming = streaming

  def expand(self, pcoll):
    keyed = (pcoll
             | 'KeepIdentified' >> beam.Filter(lambda event: bool(event.get('user_id')))
             | 'KeyByCustomer' >> beam.Map(_key_by_customer).with_output_types(tuple[str, dict]))
    if self._streaming:
      return keyed | 'FoldInState' >> beam.ParDo(_FoldInStateFn())
    return (keyed
            | 'GroupByCustomer' >> beam.GroupByKey()
            | 'FoldProfile' >> beam.Map(_fold_group))
