"""Starts the ESP connector next to the demo stack and shows a real call to it.

    python -m scripts.demo_connector start --state-dir .localstack/demo [--customer ID]
    python -m scripts.demo_connector stop  --state-dir .localstack/demo

`start` makes a random API key and tracking key for this demo (kept in the state dir, never in
the repo), starts `python -m connector` in the background on a free port with the demo's 10%
holdout and tracking URLs for a collector on 127.0.0.1:8088 (`make collect`), waits for /readyz,
then prints a curl command for one customer, named in a send of the sample campaign, and the
response it gets (docs/ENGAGEMENT.md). `stop` ends exactly that process.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time

import httpx
from google.cloud import firestore

from scripts import publish

# What `make demo` runs with: the generator's sample campaign and its holdout
# (scripts/generate_data.py), the collector's default local address (docs/COLLECTOR.md).
DEMO_CAMPAIGN = 'sample-campaign'
DEMO_HOLDOUT_PERCENT = '10'
DEMO_TRACKING_BASE_URL = 'http://127.0.0.1:8088'
EVENTS_TOPIC = 'events'


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def wait_ready(base: str, process: subprocess.Popen, seconds: float = 30) -> bool:
  """True once the connector at `base` answers /readyz; False if it exits or time runs out."""
  deadline = time.monotonic() + seconds
  while True:
    try:
      if httpx.get(base + '/readyz', timeout=1).status_code == 200:
        return True
    except httpx.TransportError:
      pass
    if process.poll() is not None or time.monotonic() > deadline:
      return False
    time.sleep(0.2)


def start(state_dir: pathlib.Path, project: str, collection: str, customer: str | None) -> int:
  stop(state_dir)
  key = secrets.token_urlsafe(24)
  (state_dir / 'connector.key').write_text(key + '\n')
  os.chmod(state_dir / 'connector.key', 0o600)
  (state_dir / 'tracking.keys').write_text(f'demo:{secrets.token_hex(32)}\n')
  os.chmod(state_dir / 'tracking.keys', 0o600)
  topic, _ = publish.ensure_topic_and_subscription(project, EVENTS_TOPIC)
  port = free_port()
  with open(state_dir / 'connector.log', 'ab') as log:  # the child keeps its own descriptor
    process = subprocess.Popen(
        [sys.executable, '-m', 'connector'], stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, 'CONNECTOR_PROJECT': project, 'CONNECTOR_COLLECTION': collection,
             'CONNECTOR_API_KEYS_FILE': str(state_dir / 'connector.key'),
             'CONNECTOR_PORT': str(port),
             'CONNECTOR_TRACKING_KEYS_FILE': str(state_dir / 'tracking.keys'),
             'CONNECTOR_TRACKING_BASE_URL': DEMO_TRACKING_BASE_URL,
             'CONNECTOR_HOLDOUT_PERCENT': DEMO_HOLDOUT_PERCENT, 'CONNECTOR_EVENTS_TOPIC': topic,
             # The stack's Redis: the demo job wrote the serving tier there (--redis_url).
             **({'CONNECTOR_REDIS_URL': os.environ['REDIS_URL']}
                if os.environ.get('REDIS_URL') else {})})
  (state_dir / 'connector.json').write_text(json.dumps({'pid': process.pid, 'port': port}))
  base = f'http://127.0.0.1:{port}'
  if not wait_ready(base, process):
    print(f'the connector did not start; see {state_dir / "connector.log"}', file=sys.stderr)
    return 1
  if customer is None:
    docs = list(firestore.Client(project=project).collection(collection)
                .order_by('last_event_at', direction='DESCENDING').limit(1).stream())
    customer = docs[0].id if docs else 'unknown'
  url = (f'{base}/v1/customers/{customer}/personalization?fields=first_name,recommendations'
         f'&campaign_id={DEMO_CAMPAIGN}&email_id=demo-email-1')
  command = (f'curl -s -H "Authorization: Bearer $(cat {shlex.quote(str(state_dir))}'
             f'/connector.key)" {shlex.quote(url)}')
  reply = httpx.get(url, headers={'Authorization': f'Bearer {key}'}, timeout=10)
  print(f'\nThe ESP connector is running on {base} (pid {process.pid}; docs/CONNECTOR.md).')
  print(f'$ {command}')
  print(json.dumps(reply.json(), indent=2, ensure_ascii=False))
  print(f'(HTTP {reply.status_code}, ETag {reply.headers.get("etag")})')
  metrics = httpx.get(f'{base}/metrics', headers={'Authorization': f'Bearer {key}'},
                      timeout=10).text
  # `connector_redis_lookups_total{result="hit"} 1.0` -> `hit 1`
  tier = [f'{line.split(chr(34))[1]} {float(line.split()[-1]):g}' for line in metrics.splitlines()
          if line.startswith('connector_redis_lookups_total{') and not line.endswith(' 0.0')]
  if tier:
    print(f'(Redis serving tier lookups: {", ".join(tier)}; docs/OPERATIONS.md)')
  return 0


def stop(state_dir: pathlib.Path) -> None:
  record = state_dir / 'connector.json'
  if not record.exists():
    return
  pid = json.loads(record.read_text())['pid']
  try:
    cmdline = pathlib.Path(f'/proc/{pid}/cmdline').read_bytes()
  except FileNotFoundError:
    cmdline = b''
  if b'connector' in cmdline:  # still our process, not a reused pid
    os.killpg(pid, signal.SIGTERM)
    print(f'connector (pid {pid}) stopped', file=sys.stderr)
  record.unlink()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('action', choices=('start', 'stop'))
  parser.add_argument('--state-dir', default='.localstack/demo')
  parser.add_argument('--project', default='demo-local')
  parser.add_argument('--collection', default='customers')
  parser.add_argument('--customer', default=None)
  args = parser.parse_args(argv)
  state_dir = pathlib.Path(args.state_dir)
  state_dir.mkdir(parents=True, exist_ok=True)
  if args.action == 'stop':
    stop(state_dir)
    return 0
  return start(state_dir, args.project, args.collection, args.customer)


if __name__ == '__main__':
  sys.exit(main())
