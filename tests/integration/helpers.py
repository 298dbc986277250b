"""Helpers shared by the integration tests."""
import contextlib
import json
import os
import signal
import pathlib
import threading
import time

import pytest
from google.cloud import pubsub_v1

from pipeline.tally import STOP_WAKE_ATTRIBUTE


def wait_for(predicate, timeout, what, every=1.0):
  """Polls `predicate` every `every` seconds until it is true (returns its value); fails the
  test after `timeout` seconds."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = predicate()
    if value:
      return value
    time.sleep(every)
  pytest.fail(f'timed out after {timeout} s waiting for {what}')


def stop_streaming(result, topic):
  """Cancels the pipeline. The DirectRunner's Pub/Sub reader blocks in a pull for up to 30 s; one
  more message published after cancelling wakes it (the test has checked its results by then).
  The wake-ups carry the attribute of scripts/stream.py's, so table counts tell them apart
  (pipeline/tally.py)."""
  stopper = threading.Thread(target=result.cancel)
  stopper.start()
  publisher = pubsub_v1.PublisherClient()
  while stopper.is_alive():
    publisher.publish(topic, b'{}', **dict([STOP_WAKE_ATTRIBUTE])).result(timeout=30)
    stopper.join(timeout=2)


def alive(pid: int) -> bool:
  """Whether `pid` is a running process (a zombie, dead but not yet reaped, is not)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  stat = pathlib.Path(f'/proc/{pid}/stat')
  try:
    return stat.read_text().split(')')[-1].split()[0] != 'Z'
  except FileNotFoundError:
    return False


@contextlib.contextmanager
def paused(local_stack_dir, component):
  """SIGSTOP to the emulator's process group (it stops answering; calls to it hang), SIGCONT on
  exit whatever happens, so a failing test never leaves the session's emulator stopped."""
  state = json.loads((local_stack_dir / 'state.json').read_text())
  pgid = int(state['components'][component]['pgid'])
  os.killpg(pgid, signal.SIGSTOP)
  try:
    yield
  finally:
    os.killpg(pgid, signal.SIGCONT)
