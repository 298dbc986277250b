"""`make stream` end to end: `python -m scripts.stream` starts its own emulators, the streaming job
and the publisher; documents reach Firestore; Ctrl-C (SIGINT to the script only, as a terminal
sends it) stops the publisher, the job and the emulators, and leaves no process behind."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

from google.cloud import firestore

from scripts import localstack

REPO = pathlib.Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  stat = pathlib.Path(f'/proc/{pid}/stat')
  return not (stat.exists() and stat.read_text().split(')')[-1].split()[0] == 'Z')


def test_stream_runs_and_ctrl_c_stops_everything(tmp_path, monkeypatch):
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
    script.send_signal(signal.SIGINT)
    assert script.wait(timeout=150) == 0, output.read_text()[-3000:]
  finally:
    if script.poll() is None:
      script.kill()
      script.wait()
      localstack.stop(state_dir)
  text = output.read_text()
  assert 'SIGINT: stopping' in text
  assert 'streaming job exited with code 0' in text, text[-3000:]
  assert re.search(r'Run summary\n.*events read +[1-9]', text), text[-3000:]  # the job's summary
  assert not any(_alive(pid) for pid in [job_pid, *emulator_pids]), text[-2000:]
  assert not (state_dir / 'state.json').exists()
