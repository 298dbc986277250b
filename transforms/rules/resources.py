"""Names of cloud resources the job is given. Pure functions, no Beam."""
from __future__ import annotations

import re


def pubsub_path_problem(path: str | None, kind: str) -> str | None:
  """Why `path` is not a full Pub/Sub `kind` path (`projects/P/<kind>s/N`), or None when it is.
  `kind` is 'subscription' or 'topic'."""
  if not path or not path.startswith('projects/') or f'/{kind}s/' not in path:
    return f'must be a full path projects/PROJECT/{kind}s/NAME, got {path!r}'
  return None


_KMS_KEY = re.compile(r'projects/[^/\s]+/locations/[a-z0-9-]+/keyRings/[A-Za-z0-9_-]{1,63}'
                      r'/cryptoKeys/[A-Za-z0-9_-]{1,63}')


def kms_key_problem(name: str | None) -> str | None:
  """Why `name` is not a Cloud KMS key name (`projects/P/locations/L/keyRings/R/cryptoKeys/K`,
  the form BigQuery, Pub/Sub and Dataflow take), or None when it is. A key version
  (`.../cryptoKeyVersions/N`) is refused: services pick the key's primary version themselves."""
  if name and '/cryptoKeyVersions/' in name:
    return (f'must name the key, not one of its versions (drop /cryptoKeyVersions/...), got '
            f'{name[:300]!r}')
  if not name or not _KMS_KEY.fullmatch(name):
    return (f'must be a Cloud KMS key name projects/PROJECT/locations/LOCATION/keyRings/RING/'
            f'cryptoKeys/KEY, got {(name or "")[:300]!r}')
  return None
