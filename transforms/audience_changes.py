"""Audience membership changes of a batch run: the documents' audiences against the memberships
the `audience_membership` table holds (docs/AUDIENCES.md, "Outputs"). Streaming records its
changes in the fold's own state instead (transforms/live_profiles.py).
"""
from __future__ import annotations

import apache_beam as beam

from transforms.rules.audiences import membership
from transforms.settings import BigQueryTarget


def recorded_members(warehouse: BigQueryTarget) -> dict[str, set[str]]:
  """customer_id -> audiences whose latest change in `audience_membership` is `entered`. Empty
  when the table does not exist yet; any other failure raises (the run would otherwise record
  every membership as new)."""
  from google.api_core.exceptions import NotFound

  from transforms.sinks import bigquery_client
  client = bigquery_client.cloud_client(warehouse.project)
  query = (f'SELECT customer_id, audience, change, changed_at '
           f'FROM `{warehouse.project}.{warehouse.dataset}.audience_membership`')
  try:
    rows = client.query(query).result()
    return membership.current_members(
        (row['customer_id'], row['audience'], row['change'], row['changed_at']) for row in rows)
  except NotFound:
    return {}
  finally:
    client.close()


class _RecordedMembersFn(beam.DoFn):
  def __init__(self, warehouse: BigQueryTarget):
    self._warehouse = warehouse

  def process(self, _):
    for customer_id, audiences in recorded_members(self._warehouse).items():
      yield customer_id, sorted(audiences)


def _changes(element):
  customer_id, grouped = element
  rendered = grouped['rendered']
  if not rendered:  # not in this run's input: its membership is not re-evaluated
    return []
  audiences, reference_time = rendered[0]
  previous = grouped['previous'][0] if grouped['previous'] else []
  return membership.changes(customer_id, previous, audiences, reference_time)


class BatchAudienceChanges(beam.PTransform):
  """Input: `(customer_id, (audiences, reference_time))` of every customer the run rendered (no
  audiences for a withheld document: BatchProfiles' `audiences`). Output: `audience_membership`
  records: what changed since the memberships the table records, at the reference time. A
  customer the run did not render keeps what the table says."""

  def __init__(self, warehouse: BigQueryTarget):
    super().__init__()
    self._warehouse = warehouse

  def expand(self, rendered):
    previous = (rendered.pipeline
                | 'Seed' >> beam.Create([None])
                | 'RecordedMembers' >> beam.ParDo(_RecordedMembersFn(self._warehouse)))
    return ({'rendered': rendered, 'previous': previous}
            | 'JoinByCustomer' >> beam.CoGroupByKey()
            | 'Diff' >> beam.FlatMap(_changes))
