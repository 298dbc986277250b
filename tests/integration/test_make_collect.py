"""`make collect` end to end: `python -m scripts.collect start` brings up its own emulators and the
collector, an event posted the way its printed curl line does arrives in the subscription
(`pull`), and `stop` leaves no process of it running."""
import json
import os
import pathlib
import re
import subprocess
import sys
import uuid

import httpx

from scripts import collect
from scripts.demo_connector import free_port
from tests.integration.helpers import alive

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(*args, env):
  return subprocess.run([sys.executable, '-m', 'scripts.collect', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=180)


def test_collect_start_event_pull_stop(tmp_path):
  state_dir = tmp_path / 'collect'
  env = {k: v for k, v in os.environ.items()
         if not k.endswith('_EMULATOR_HOST')}  # its own stack, not the suite's
  port = free_port()
  started = _run('start', '--state-dir', str(state_dir), '--port', str(port), env=env)
  try:
    assert started.returncode == 0, started.stdout + started.stderr
    base = f'http://127.0.0.1:{port}'
    assert f"host='{base}'" in started.stdout  # analytics-python, and the printed curl line:
    assert f"apiHost: '127.0.0.1:{port}/v1'" in started.stdout
    assert f'curl -s -u {collect.LOCAL_WRITE_KEY}: ' in started.stdout
    pid = json.loads((state_dir / 'collector.json').read_text())['pid']
    emulator_pids = [int(c['pid']) for c in json.loads(
        (state_dir / 'state.json').read_text())['components'].values()]
    message_id = f'collect-{uuid.uuid4()}'
    reply = httpx.post(f'{base}/v1/track', auth=(collect.LOCAL_WRITE_KEY, ''), timeout=10,
                       json={'userId': 'c00001', 'event': 'Product Viewed',
                             'messageId': message_id, 'properties': {'product_id': 'p0001'}})
    assert reply.status_code == 200 and reply.json() == {'success': True}
    pulled = _run('pull', '--state-dir', str(state_dir), env=env)
    assert pulled.returncode == 0, pulled.stderr
    messages = [json.loads(line) for line in pulled.stdout.splitlines()]
    assert [m['data']['messageId'] for m in messages] == [message_id]
    assert messages[0]['attributes']['source'] == collect.LOCAL_SOURCE
    assert messages[0]['data']['event'] == 'Product Viewed'
  finally:
    stopped = _run('stop', '--state-dir', str(state_dir), env=env)
  assert stopped.returncode == 0, stopped.stderr
  assert re.search(rf'collector \(pid {pid}\) stopped', stopped.stderr)
  assert not any(alive(p) for p in [pid, *emulator_pids]), stopped.stderr
  assert not (state_dir / 'state.json').exists() and not (state_dir / 'collector.json').exists()
  assert 'Application shutdown complete' in (state_dir / 'collector.log').read_text()
