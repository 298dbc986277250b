"""What to send where: pure rules of the sync worker, no I/O.

Changes (schemas/profile_change.schema.json) of one batch coalesce per customer: each field and
each audience keeps the value of the newest version that carried it. A destination's mapping turns
them into ESP attributes, each with the version it came from. The worker's state holds, per
destination, customer and attribute, the hash and version of what was last delivered: an
attribute is sent only when its version is newer than the stored one *and* its value differs,
so a replay, a redelivery or a restart sends nothing already delivered, and an older version never
replaces a newer one (also when Pub/Sub delivers them out of order).
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Iterable, Mapping

import orjson

from connector.sync.config import Destination

# State: {attribute: [hash, version]} per destination and customer.
State = Mapping[str, tuple[str, int]]


@dataclasses.dataclass
class Pending:
  """A customer's coalesced changes: field -> (value, version), audience -> (member, version)."""
  customer_id: str
  fields: dict[str, tuple[Any, int]] = dataclasses.field(default_factory=dict)
  audiences: dict[str, tuple[bool, int]] = dataclasses.field(default_factory=dict)
  version: int = 0          # newest version seen
  deleted: bool = False     # the newest version is a deletion

  def add(self, change: Mapping) -> None:
    version = change['version']
    for name, value in change['changed'].items():
      if name not in self.fields or self.fields[name][1] < version:
        self.fields[name] = (value, version)
    for member, keys in ((True, change['audiences']['entered']),
                         (False, change['audiences']['exited'])):
      for key in keys:
        if key not in self.audiences or self.audiences[key][1] < version:
          self.audiences[key] = (member, version)
    if version >= self.version:
      self.version, self.deleted = version, bool(change['deleted'])


def coalesce(changes: Iterable[Mapping]) -> dict[str, Pending]:
  """Validated change messages -> one Pending per customer (any order in, same result out)."""
  pending: dict[str, Pending] = {}
  for change in changes:
    customer = change['customer_id']
    pending.setdefault(customer, Pending(customer)).add(change)
  return pending


def attributes(pending: Pending, destination: Destination) -> dict[str, tuple[Any, int]]:
  """The destination's attributes in a customer's changes: ESP attribute -> (value, version)."""
  out = {}
  for field, attribute in destination.fields:
    if field in pending.fields:
      out[attribute] = pending.fields[field]
  for key, (member, version) in pending.audiences.items():
    if destination.receives(key):
      out[destination.attribute_of_audience(key)] = (member, version)
  return out


def value_hash(value: Any) -> str:
  """A short stable hash of a JSON value (key order does not matter)."""
  return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


@dataclasses.dataclass
class Delta:
  """What one customer needs at one destination."""
  send: dict[str, Any]                     # attribute -> value to send
  state: dict[str, tuple[str, int]]        # attribute -> (hash, version) once delivered
  unchanged: int = 0                       # attributes whose value the ESP already has
  older: int = 0                           # attributes older than what was delivered


def delta(attrs: Mapping[str, tuple[Any, int]], stored: State) -> Delta:
  """Compares a customer's attributes with the stored state of what was delivered."""
  result = Delta({}, {})
  for attribute, (value, version) in attrs.items():
    digest = value_hash(value)
    previous = stored.get(attribute)
    if previous is not None and previous[1] >= version:
      result.older += 1
      continue
    if previous is not None and previous[0] == digest:
      result.unchanged += 1
      result.state[attribute] = (digest, version)  # the same value, at a newer version
      continue
    result.send[attribute] = value
    result.state[attribute] = (digest, version)
  return result
