"""Shows what a run wrote: one query over the events table and one Firestore document.

`python -m scripts.show --project=demo-local [--dataset=personalization] [--collection=customers]`
Uses BIGQUERY_EMULATOR_HOST / FIRESTORE_EMULATOR_HOST when set (eval "$(python -m scripts.localstack env)").
"""
from __future__ import annotations

import argparse
import json
import sys

from google.cloud import firestore

from transforms.sinks import bigquery_client

QUERY = """
SELECT COALESCE(event, type) AS name, COUNT(*) AS events, COUNT(DISTINCT user_id) AS customers,
       MIN(event_time) AS first_seen, MAX(event_time) AS last_seen
FROM `{project}.{dataset}.events`
GROUP BY name
ORDER BY events DESC
LIMIT 12
"""


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--project', default='demo-local')
  parser.add_argument('--dataset', default='personalization')
  parser.add_argument('--collection', default='customers')
  args = parser.parse_args(argv)

  bq = bigquery_client.cloud_client(args.project)
  table = bq.get_table(f'{args.project}.{args.dataset}.events')
  print(f'\nBigQuery table {table.full_table_id}: {table.num_rows} rows, partitioned '
        f'{table.time_partitioning.type_} on {table.time_partitioning.field}, clustered by '
        f'{", ".join(table.clustering_fields or [])}')
  query = QUERY.format(project=args.project, dataset=args.dataset)
  print(query.strip())
  rows = list(bq.query(query).result())
  print(f'{"event":<22} {"events":>8} {"customers":>10}  first_seen .. last_seen')
  for row in rows:
    print(f'{str(row["name"]):<22} {row["events"]:>8} {row["customers"]:>10}  '
          f'{row["first_seen"]:%Y-%m-%d %H:%M} .. {row["last_seen"]:%Y-%m-%d %H:%M}')

  db = firestore.Client(project=args.project)
  docs = list(db.collection(args.collection).order_by('last_event_at', direction='DESCENDING')
              .limit(1).stream())
  if not docs:
    print(f'\nno documents in Firestore collection {args.collection!r}', file=sys.stderr)
    return 1
  print(f'\nFirestore document {args.collection}/{docs[0].id}:')
  print(json.dumps(docs[0].to_dict(), indent=2, default=str, ensure_ascii=False, sort_keys=True))
  return 0


if __name__ == '__main__':
  sys.exit(main())
