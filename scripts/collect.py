"""The tracking collector on its own local stack, to point a real SDK (or curl) at.

    python -m scripts.collect start [--state-dir .localstack/collect] [--port 8088]
    python -m scripts.collect pull  [--state-dir .localstack/collect] [--max 20]
    python -m scripts.collect stop  [--state-dir .localstack/collect]

`start` (what `make collect` runs) starts the emulators (scripts.localstack, in this state dir),
creates the events topic and a subscription that keeps what arrives, starts `python -m collector`
in its own process group (log in <state-dir>/collector.log), waits for /readyz and prints how to
point each SDK at it. `pull` prints (and acknowledges) what has arrived. `stop` (also run by
`make stop`) ends exactly that collector, then the emulators.

The write key, LOCAL_WRITE_KEY, is fixed and printed: it is for this local stack only, not a
secret; a deployed collector takes its keys from COLLECTOR_WRITE_KEYS(_FILE).

The helpers (`start_collector`, `stop_collector`, `metric`) are also what scripts.stream and the
integration tests use to run the collector.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time
from typing import Mapping

import httpx

from scripts import localstack, publish
from scripts.demo_connector import free_port, wait_ready

PROJECT = 'demo-local'
TOPIC = 'events'
SUBSCRIPTION = 'events-collect'
# Local-only: the key the local collector accepts, printed for the user; never a deployed key.
LOCAL_WRITE_KEY = 'wk_demo_local'
LOCAL_SOURCE = 'local'
DEFAULT_PORT = 8088
_RECORD = 'collector.json'


def start_collector(log_path: pathlib.Path, project: str, topic: str,
                    write_keys: Mapping[str, str], port: int,
                    env: Mapping[str, str] | None = None) -> subprocess.Popen:
  """Starts `python -m collector` on 127.0.0.1:`port` publishing to `topic` (an id), in its own
  process group (a terminal's Ctrl-C does not reach it), its JSON log appended to `log_path`.
  `write_keys` maps key -> source; `env` (default os.environ) must hold PUBSUB_EMULATOR_HOST for
  the emulator."""
  with open(log_path, 'ab') as log:  # the child keeps its own descriptor
    return subprocess.Popen(
        [sys.executable, '-m', 'collector'], stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
        env={**(os.environ if env is None else env), 'COLLECTOR_PROJECT': project,
             'COLLECTOR_TOPIC': topic, 'COLLECTOR_HOST': '127.0.0.1', 'COLLECTOR_PORT': str(port),
             'COLLECTOR_WRITE_KEYS': ','.join(f'{k}:{s}' for k, s in write_keys.items())})


def stop_collector(process: subprocess.Popen | None, timeout: float = 30) -> int | None:
  """SIGTERM: the collector answers what is in flight, flushes to Pub/Sub and exits 0 (so does
  scripts.replay, which stream.py stops with this too). SIGKILL to its process group after
  `timeout`. Returns the exit code."""
  if process is None:
    return None
  if process.poll() is None:
    process.send_signal(signal.SIGTERM)
    try:
      process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
  return process.returncode


def metric(base: str, name: str, **labels: str) -> float:
  """The sum of the collector's /metrics samples called `name` whose labels include `labels`
  (e.g. `collector_events_accepted_total`, source='sample'); 0 when there is none."""
  from prometheus_client.parser import text_string_to_metric_families
  text = httpx.get(base + '/metrics', timeout=5).text
  return sum(sample.value for family in text_string_to_metric_families(text)
             for sample in family.samples
             if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def sdk_help(base: str, key: str) -> str:
  """How to point each SDK (and curl) at the collector at `base`."""
  host_path = base.split('://', 1)[1] + '/v1'
  event = json.dumps({'userId': 'c00001', 'event': 'Product Viewed',
                      'properties': {'product_id': 'p0001', 'price': 19.99}})
  return '\n'.join([
      'Point an SDK at it (each posts batches to <host>/v1/batch):',
      f"  analytics-python   Client('{key}', host='{base}', gzip=True)",
      f"  analytics-node     new Analytics({{ writeKey: '{key}', host: '{base}' }})",
      f"  analytics.js       analytics.load('{key}', {{ integrations: {{ 'Segment.io': "
      f"{{ apiHost: '{host_path}', protocol: 'http' }} }} }})",
      '                     (apiHost is host/path without the scheme; a browser page also needs '
      'its origin',
      '                     in COLLECTOR_ALLOWED_ORIGINS, set to * here)',
      f"  RudderStack        dataPlaneUrl '{base}' (rudder-sdk-python: Client('{key}', "
      f"host='{base}'))",
      '  curl:',
      f'    curl -s -u {key}: -H "Content-Type: application/json" \\',
      f"      -d {shlex.quote(event)} {base}/v1/track",
  ])


def start(state_dir: pathlib.Path, port: int) -> int:
  end_recorded_collector(state_dir, quiet=True)  # the emulators, if running, are kept
  env = localstack.start(state_dir)
  os.environ.update(env)
  topic, subscription = publish.ensure_topic_and_subscription(PROJECT, TOPIC, SUBSCRIPTION)
  if not localstack.port_is_free(port):
    chosen = free_port()
    print(f'port {port} is taken: using {chosen}', file=sys.stderr)
    port = chosen
  log_path = state_dir / 'collector.log'
  process = start_collector(log_path, PROJECT, TOPIC, {LOCAL_WRITE_KEY: LOCAL_SOURCE}, port,
                            {**os.environ, 'COLLECTOR_ALLOWED_ORIGINS': '*'})
  (state_dir / _RECORD).write_text(json.dumps({'pid': process.pid, 'port': port}))
  base = f'http://127.0.0.1:{port}'
  if not wait_ready(base, process):
    print('the collector did not start; its log ends with:\n'
          + '\n'.join(localstack.tail_lines(log_path, 20)), file=sys.stderr)
    stop(state_dir)
    return 1
  print(f'\nThe tracking collector is running on {base} (pid {process.pid}, log {log_path}),')
  print(f'publishing to {topic} on the local Pub/Sub emulator ({env["PUBSUB_EMULATOR_HOST"]}).')
  print(f'Write key: {LOCAL_WRITE_KEY} (source "{LOCAL_SOURCE}"; a local-only key, not a '
        'secret).\n')
  print(sdk_help(base, LOCAL_WRITE_KEY))
  print(f'\nWhat arrived: {sys.executable} -m scripts.collect pull --state-dir {state_dir}')
  print(f'(subscription {subscription}). `make stop` stops the collector and its emulators.')
  return 0


def pull(state_dir: pathlib.Path, most: int) -> int:
  """Prints up to `most` messages of the subscription (data and attributes) and acknowledges
  them."""
  os.environ.update(localstack.environment(state_dir))
  from google.cloud import pubsub_v1
  path = publish.subscription_path(PROJECT, SUBSCRIPTION)
  with pubsub_v1.SubscriberClient() as subscriber:
    reply = subscriber.pull(subscription=path, max_messages=most, timeout=10)
    for received in reply.received_messages:
      print(json.dumps({'attributes': dict(received.message.attributes),
                        'data': json.loads(received.message.data)}, ensure_ascii=False))
    if reply.received_messages:
      subscriber.acknowledge(subscription=path,
                             ack_ids=[r.ack_id for r in reply.received_messages])
  print(f'{len(reply.received_messages)} message(s)', file=sys.stderr)
  return 0


def stop(state_dir: pathlib.Path) -> None:
  """Ends the collector `start` recorded, then the emulators."""
  end_recorded_collector(state_dir)
  localstack.stop(state_dir)


def end_recorded_collector(state_dir: pathlib.Path, quiet: bool = False) -> None:
  """Ends the collector `start` recorded, if it is still ours: SIGTERM, SIGKILL after 30 s."""
  record = state_dir / _RECORD
  if record.exists():
    pid = json.loads(record.read_text())['pid']
    if b'collector' in _cmdline(pid):  # still our process, not a reused pid
      os.killpg(pid, signal.SIGTERM)
      deadline = time.monotonic() + 30
      while _cmdline(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
      if _cmdline(pid):
        os.killpg(pid, signal.SIGKILL)
      if not quiet:
        print(f'collector (pid {pid}) stopped', file=sys.stderr)
    record.unlink()


def _cmdline(pid: int) -> bytes:
  """The process's command line; empty once it is gone (or a zombie)."""
  try:
    return pathlib.Path(f'/proc/{pid}/cmdline').read_bytes()
  except (FileNotFoundError, ProcessLookupError):
    return b''


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('action', choices=('start', 'pull', 'stop'))
  parser.add_argument('--state-dir', default='.localstack/collect')
  parser.add_argument('--port', type=int, default=DEFAULT_PORT,
                      help='port to listen on (a free one when it is taken)')
  parser.add_argument('--max', type=int, default=20, help='pull: at most this many messages')
  args = parser.parse_args(argv)
  state_dir = pathlib.Path(args.state_dir)
  try:
    if args.action == 'stop':
      if state_dir.exists():
        stop(state_dir)
      return 0
    if args.action == 'pull':
      return pull(state_dir, args.max)
    state_dir.mkdir(parents=True, exist_ok=True)
    return start(state_dir, args.port)
  except localstack.LocalStackError as err:
    print(f'error: {err}', file=sys.stderr)
    return 1


if __name__ == '__main__':
  sys.exit(main())
