"""Names of cloud resources the job is given. Pure functions, no Beam."""
from __future__ import annotations


def pubsub_path_problem(path: str | None, kind: str) -> str | None:
  """Why `path` is not a full Pub/Sub `kind` path (`projects/P/<kind>s/N`), or None when it is.
  `kind` is 'subscription' or 'topic'."""
  if not path or not path.startswith('projects/') or f'/{kind}s/' not in path:
    return f'must be a full path projects/PROJECT/{kind}s/NAME, got {path!r}'
  return None
