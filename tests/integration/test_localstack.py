"""The local stack script against the real emulators: idempotent start, env, exact stop."""
import os
import subprocess
import sys
import urllib.request

from scripts import localstack


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  with open(f'/proc/{pid}/stat') as stat:
    return stat.read().split(')')[-1].split()[0] != 'Z'


def test_start_is_idempotent_env_is_usable_and_stop_ends_exactly_its_processes(tmp_path):
  state_dir = tmp_path / 'stack'
  env = localstack.start(state_dir)
  try:
    pids = {name: entry['pid'] for name, entry in localstack.load_state(state_dir)
            ['components'].items()}
    assert set(pids) == {'pubsub', 'firestore', 'bigquery', 'redis'}
    assert env['BIGQUERY_EMULATOR_HOST'].startswith('http://127.0.0.1:')
    assert env['FIRESTORE_EMULATOR_HOST'].startswith('127.0.0.1:')
    assert env['PUBSUB_EMULATOR_HOST'].startswith('127.0.0.1:')
    assert env['GOOGLE_CLOUD_PROJECT'] == 'demo-local'
    with urllib.request.urlopen(env['BIGQUERY_EMULATOR_HOST'] + '/healthz', timeout=5) as reply:
      assert reply.status == 200
    assert env['REDIS_URL'].startswith('redis://127.0.0.1:')
    assert localstack.redis_answers(int(env['REDIS_URL'].rsplit(':', 1)[1].split('/')[0]), 2)

    # A second start leaves the running stack alone.
    assert localstack.start(state_dir) == env
    assert {name: entry['pid'] for name, entry in localstack.load_state(state_dir)
            ['components'].items()} == pids

    # The CLI prints the same environment as export lines.
    printed = subprocess.run(
        [sys.executable, '-m', 'scripts.localstack', '--state-dir', str(state_dir), 'env'],
        capture_output=True, text=True, check=True).stdout
    assert f"export BIGQUERY_EMULATOR_HOST={env['BIGQUERY_EMULATOR_HOST']}" in printed
  finally:
    localstack.stop(state_dir)
  assert not any(_alive(pid) for pid in pids.values())
  assert localstack.load_state(state_dir) is None
  localstack.stop(state_dir)  # stopping a stopped stack is a no-op
