"""The integration suite's real components: one local stack (Pub/Sub, Firestore and BigQuery
emulators) per test session, started by scripts.localstack and stopped when the session ends."""
import contextlib
import fcntl
import os
import pathlib
import uuid

import pytest

from scripts import localstack


def pytest_collection_modifyitems(items):
  for item in items:
    if '/integration/' in str(item.fspath):
      item.add_marker(pytest.mark.integration)


@pytest.fixture(scope='session')
def local_stack_dir(tmp_path_factory):
  """The session stack's state dir (fault tests pause its emulators through the pids it holds)."""
  return pathlib.Path(tmp_path_factory.mktemp('localstack'))


@pytest.fixture(scope='session')
def local_stack(local_stack_dir):
  """Starts the emulators (their own state dir, free ports) and exports their environment."""
  state_dir = local_stack_dir
  with one_start_at_a_time(local_stack_dir):
    env = localstack.start(state_dir)
  saved = {name: os.environ.get(name) for name in env}
  os.environ.update(env)
  try:
    yield env
  finally:
    for name, value in saved.items():
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value
    localstack.stop(state_dir)


@pytest.fixture
def unique_name():
  """A fresh dataset/collection name, so tests sharing the stack never see each other's data."""
  return f't{uuid.uuid4().hex[:10]}'


@contextlib.contextmanager
def one_start_at_a_time(state_dir):
  """Under pytest-xdist (`make test` runs two workers, each with its own stack), holds a lock
  the session's workers share while this one starts its stack. A stack picks its ports by
  binding port 0 and closing the socket, and the emulators bind more ports of the kernel's
  choosing as they start: two stacks starting together could pick the same port, while a stack
  started once the other is ready never picks a port the other has bound. A serial run takes
  no lock."""
  if not os.environ.get('PYTEST_XDIST_WORKER'):
    yield
    return
  # Each worker's temporary root is <the session's root>/popen-gwN (tmp_path_factory).
  lock_path = pathlib.Path(state_dir).parents[1] / 'localstack-start.lock'
  with open(lock_path, 'a') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
