"""Per-customer features: the profile fold applied to each customer's events."""
from __future__ import annotations

import apache_beam as beam

from transforms.rules import profile


def _build_document(element):
  customer_id, events = element
  return customer_id, profile.render(profile.fold(customer_id, events))


class BuildProfiles(beam.PTransform):
  """Folds each identified customer's events into a serving document.

  Input: event records (deduplicated). Events without a `user_id` are anonymous and produce no
  document. Output: `(customer_id, document)` pairs, the document shaped as
  `transforms.rules.profile.render` returns it.
  """

  def expand(self, pcoll):
    return (pcoll
            | 'KeepIdentified' >> beam.Filter(lambda event: bool(event.get('user_id')))
            | 'KeyByCustomer' >> beam.Map(lambda event: (event['user_id'], event))
            | 'GroupByCustomer' >> beam.GroupByKey()
            | 'FoldProfile' >> beam.Map(_build_document))
