"""`make stream` end to end: `python -m scripts.stream` starts its own emulators, the streaming job,
the collector and the Segment-client replayer; documents reach Firestore, every event having gone
through the collector; Ctrl-C (SIGINT to the script only, as a terminal sends it) stops the
replayer, the collector, the job and the emulators, and leaves no process behind."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

from google.cloud import firestore

from scripts import collect, localstack, stream
from tests.integration.helpers import alive

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_stream_runs_and_ctrl_c_stops_everything(tmp_path, monkeypatch, capsys):
  data = tmp_path / 'data'
  subprocess.run([sys.executable, '-m', 'scripts.generate_data', '--out', str(data),
                  '--events', '1500', '--customers', '100', '--files', '1'],
                 cwd=REPO, check=True, capture_output=True)
  state_dir = tmp_path / 'stack'
  output = tmp_path / 'stream.out'
  env = {k: v for k, v in os.environ.items()
         if not k.endswith('_EMULATOR_HOST')}  # its own stack, not the suite's
  with open(output, 'wb') as out:
    script = subprocess.Popen(
        [sys.executable, '-m', 'scripts.stream', '--rate', '20', '--limit', '300',
         '--data', str(data), '--state-dir', str(state_dir)],
        cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
  try:
    deadline = time.monotonic() + 150
    documents = 0
    stack = None
    while time.monotonic() < deadline and script.poll() is None:
      time.sleep(2)
      if stack is None and localstack.load_state(state_dir):
        try:
          stack = localstack.environment(state_dir)
        except localstack.LocalStackError:
          continue
      if stack is not None:
        # monkeypatch restores the suite's own value (other tests use the session stack).
        monkeypatch.setenv('FIRESTORE_EMULATOR_HOST', stack['FIRESTORE_EMULATOR_HOST'])
        documents = sum(1 for _ in firestore.Client(project='demo-local')
                        .collection('customers').list_documents())
        if documents >= 20:
          break
    assert script.poll() is None, output.read_text()[-3000:]
    assert documents >= 20, f'only {documents} documents after 150 s:\n' + \
        output.read_text()[-3000:]
    recorded = json.loads((state_dir / 'state.json').read_text())
    emulator_pids = [int(c['pid']) for c in recorded['components'].values()]
    text = output.read_text()
    job_pid = int(re.search(r'streaming job started \(pid (\d+)\)', text).group(1))
    collector_pid = int(re.search(r'collector started \(pid (\d+)\)', text).group(1))
    replayer_pid = int(re.search(r'replayer started \(pid (\d+)\)', text).group(1))
    assert f'write key {collect.LOCAL_WRITE_KEY} (local only' in text
    # `make stream-status` on the running job: exact table counts against what the collector
    # has accepted so far (read after the tables, so the derived rest cannot be negative).
    # In this process (it sets the stream stack's environment, which monkeypatch restores).
    for name, value in stack.items():
      monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert stream.print_status(state_dir) == 0, capsys.readouterr().err[-2000:]
    status = capsys.readouterr().out
    running = _accounting(status)
    assert running['events rows'] >= 1 and running['the rest'] >= 0, status
    assert 'left unread' not in status  # a running job's backlog is not pulled from it
    assert 'DOES NOT ADD UP' not in status
    script.send_signal(signal.SIGINT)
    assert script.wait(timeout=150) == 0, output.read_text()[-3000:]
  finally:
    if script.poll() is None:
      # A failed check: stop it the way a terminal does first, so the job, collector and
      # replayer (in their own process groups) are not left running; SIGKILL as a last resort.
      script.send_signal(signal.SIGINT)
      try:
        script.wait(timeout=120)
      except subprocess.TimeoutExpired:
        script.kill()
        script.wait()
      localstack.stop(state_dir)
  text = output.read_text()
  assert 'SIGINT: stopping' in text
  assert 'streaming job exited with code 0' in text, text[-3000:]
  assert re.search(r'Run summary\n.*events read +[1-9]', text), text[-3000:]  # the job's summary
  # The job's own summary ends with the exact counts read from its tables (in its log); the
  # script shows them once, with the accounting of what the collector accepted.
  assert 'Table counts (exact, read from the tables; rows written since' in (
      state_dir / 'pipeline.log').read_text()
  stopped = _accounting(text[text.index('this run, exact:'):])
  assert text.count('Table counts (exact') == 1 and 'DOES NOT ADD UP' not in text
  # Every event the replayer's Segment client sent was accepted by the collector, in batches
  # posted to /v1/batch with the sample's write key; and the collector exited cleanly.
  sent = int(re.search(r'sent (\d+) events in', (state_dir / 'replayer.log').read_text()).group(1))
  requests = [json.loads(line) for line in (state_dir / 'collector.log').read_text().splitlines()
              if '"collector.access"' in line]
  assert requests and {(r['route'], r['status'], r['source']) for r in requests} == \
      {('/v1/batch', 200, 'sample')}
  accepted = int(re.search(r'collector exited with code 0 \(it accepted (\d+) events\)',
                           text).group(1))
  assert sum(r['events'] for r in requests) == accepted == sent >= 20, text[-3000:]
  assert stopped['accepted by the collector'] == accepted >= stopped['events rows'] >= 1
  assert stopped['the rest'] == (accepted - stopped['events rows'] - stopped['event dead letters']
                                 - stopped['left unread in Pub/Sub']) >= 0
  assert text.index('replayer exited with code 0') < text.index('collector exited') < \
      text.index('streaming job exited')
  assert not any(alive(pid) for pid in [job_pid, collector_pid, replayer_pid, *emulator_pids]), \
      text[-2000:]
  assert not (state_dir / 'state.json').exists()


def _accounting(text: str) -> dict[str, int]:
  """The figures of the accounting lines pipeline.tally renders: label -> value."""
  block = text[text.index('accounting of events'):]
  return {m.group(1): int(m.group(2).replace(',', '')) for m in re.finditer(
      r'^ {4}(accepted by the collector|events rows|event dead letters|left unread in Pub/Sub|'
      r'the rest) +'
      r'(-?[\d,]+)', block, re.M)}
