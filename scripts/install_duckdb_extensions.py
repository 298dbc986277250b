"""Install DuckDB's `spatial` and `avro` extensions from their PyPI wheels (run in .venv-bq).

bqemulator loads these extensions when it starts. DuckDB would download them from its own
extension server, which this machine cannot reach; the `duckdb-extension-*` wheels ship the same
binaries, and `INSTALL '<file>'` copies them into DuckDB's extension folder
(~/.duckdb/extensions/<version>/<platform>/). Idempotent: re-installing the same file is a no-op.
"""
import importlib.util
import pathlib
import sys

import duckdb

EXTENSIONS = ('spatial', 'avro')


def _extension_file(name: str) -> pathlib.Path:
  spec = importlib.util.find_spec(f'duckdb_extension_{name}')
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit(
        f'duckdb-extension-{name} is not installed in this environment: '
        'run `make venv` (it installs scripts/requirements-bqemulator.txt)')
  root = pathlib.Path(next(iter(spec.submodule_search_locations)))
  files = sorted(root.rglob(f'{name}.duckdb_extension'))
  if not files:
    raise SystemExit(f'no {name}.duckdb_extension file inside {root}')
  return files[0]


def main() -> int:
  con = duckdb.connect()
  for name in EXTENSIONS:
    path = _extension_file(name)
    con.execute(f"INSTALL '{path}'")
    con.execute(f'LOAD {name}')
    print(f'duckdb {duckdb.__version__}: extension {name} installed from {path.name}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
