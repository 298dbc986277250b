"""Reference data for the streaming fold (CRM export, product catalog, and the product popularity
the streaming job itself maintains in Firestore), loaded once per worker process and re-read every
`refresh_minutes`.

Why not Beam's slowly-changing side input pattern (PeriodicImpulse -> re-read -> AsSingleton):
PeriodicImpulse is a splittable DoFn, and the local streaming runner (BundleBasedDirectRunner)
cannot run splittable DoFns (`_GroupByKeyOnly was not replaced`), so the pattern would work on
Dataflow only and the local streaming path would have no enrichment at all. A per-process cache
that re-reads the same files on a timer works on every runner, and the stateful fold can use it
from its timer callbacks too, where Beam Python offers no side inputs. The price: each worker
process re-reads the files itself (they are small next to the event stream).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable

from apache_beam.io.filesystems import FileSystems

from transforms.rules import profile, reference
from transforms.rules.dead_letters import Rejection
from transforms.settings import FirestoreLocation

_log = logging.getLogger(__name__)
_LOCK = threading.Lock()
_LOADED: dict[tuple, 'ReferenceData'] = {}


@dataclasses.dataclass(frozen=True)
class ReferenceData:
  customers: dict
  catalog: dict
  recommender: profile.Recommender
  loaded_at: float


def read_records(pattern: str | None, parse: Callable) -> dict:
  """Every valid record of the files matching `pattern`, by id (rejected rows are skipped here:
  the batch path dead-letters them, and the streaming job reads the same files)."""
  records = {}
  if not pattern:
    return records
  for match in FileSystems.match([pattern])[0].metadata_list:
    with FileSystems.open(match.path) as handle:
      data = handle.read()
    for _, result in reference.parse_records(match.path, data, parse):
      if not isinstance(result, Rejection):
        key = result.get('customer_id') or result.get('product_id')
        records[key] = result
  return records


def read_popularity(source: FirestoreLocation | None) -> dict[str, int]:
  """product_id -> customers, from the popularity collection the streaming job maintains
  (transforms.live_profiles.LivePopularity)."""
  if source is None:
    return {}
  from google.cloud import firestore  # honours FIRESTORE_EMULATOR_HOST
  client = firestore.Client(project=source.project, database=source.database)
  try:
    return {snapshot.id: int(snapshot.get('customers') or 0)
            for snapshot in client.collection(source.collection).select(['customers']).stream()}
  finally:
    client.close()


def load(customers: str | None, catalog: str | None,
         popularity: FirestoreLocation | None = None) -> ReferenceData:
  crm = read_records(customers, reference.parse_customer)
  products = read_records(catalog, reference.parse_product)
  ranking = read_popularity(popularity)
  return ReferenceData(crm, products, profile.Recommender(products, ranking), time.monotonic())


def current(customers: str | None, catalog: str | None, refresh_minutes: float,
            popularity: FirestoreLocation | None = None) -> ReferenceData:
  """The process's reference data, re-read when older than `refresh_minutes`."""
  key = (customers, catalog, popularity)
  with _LOCK:
    data = _LOADED.get(key)
    if data is None or time.monotonic() - data.loaded_at >= refresh_minutes * 60:
      data = load(customers, catalog, popularity)
      _LOADED[key] = data
      _log.info('reference data loaded: %d customers, %d products', len(data.customers),
                len(data.catalog))
    return data
