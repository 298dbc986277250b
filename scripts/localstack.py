"""Start, stop and inspect the local emulator stack (Pub/Sub, Firestore, BigQuery).

Usage, from the repository root:

  python -m scripts.localstack [--state-dir DIR] start|stop|status|env
  eval "$(python -m scripts.localstack env)"

The three emulators listen on 127.0.0.1 only. Each one leads its own process group, and
`<state-dir>/state.json` records what this script started (pid, process group, ports, command
line, log file), so `stop` ends exactly those processes and nothing else: it never kills by name
or port, and it checks `/proc/<pid>/cmdline` first so that a reused pid is left alone.

The test suite uses the Python API: `start(state_dir)` returns the environment mapping that
`env` prints, `environment(state_dir)` reads it back, `stop(state_dir)` ends the stack. Errors are
raised as `LocalStackError` with a one-line message; the CLI prints it and exits non-zero.

Environment variables:
  LOCALSTACK_STATE_DIR   default state dir (else .localstack/demo in the current directory)
  LOCALSTACK_PROJECT     local project id (default demo-local)
  LOCALSTACK_TIMEOUT     seconds to wait for the emulators to answer (default 90)
  CLOUDSDK_ROOT          Google Cloud SDK root (else `gcloud info`, else /usr/lib/google-cloud-sdk)
  BQEMULATOR_BIN         bqemulator executable (else .venv-bq/bin/bqemulator)
  PUBSUB_PORT, FIRESTORE_PORT, BIGQUERY_PORT, BIGQUERY_GRPC_PORT
                         fixed ports (else free ports are chosen at start)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import http.client
import json
import os
import pathlib
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator, Mapping, Sequence

PROJECT = 'demo-local'
HOST = '127.0.0.1'
COMPONENTS = ('pubsub', 'firestore', 'bigquery', 'redis')
DEFAULT_STATE_DIR = pathlib.Path('.localstack') / 'demo'
DEFAULT_SDK_ROOT = pathlib.Path('/usr/lib/google-cloud-sdk')
DEFAULT_BQ_VENV = pathlib.Path('.venv-bq')
DEFAULT_TIMEOUT = 90.0
STOP_GRACE_SECONDS = 10.0
KILL_WAIT_SECONDS = 5.0
POLL_SECONDS = 0.2
PROBE_TIMEOUT_SECONDS = 2.0
LOG_TAIL_LINES = 20
STATE_FILE = 'state.json'
LOCK_FILE = '.lock'
STATE_VERSION = 1

FIRESTORE_MAIN = 'com.google.cloud.datastore.emulator.firestore.CloudFirestore'
# Port names per component, and the environment variable that fixes each port.
PORTS: dict[str, tuple[tuple[str, str], ...]] = {
    'pubsub': (('http', 'PUBSUB_PORT'),),
    'firestore': (('http', 'FIRESTORE_PORT'),),
    'bigquery': (('rest', 'BIGQUERY_PORT'), ('grpc', 'BIGQUERY_GRPC_PORT')),
    'redis': (('tcp', 'REDIS_PORT'),),
}
REDIS_MISSING = ('redis-server not found (the serving tier, docs/OPERATIONS.md): apt-get install '
                 'redis-server (`make venv` does it), or set REDIS_SERVER_BIN')

JAVA_MISSING = (
    'Java 17 is required for the Pub/Sub and Firestore emulators: '
    'apt-get install openjdk-17-jre-headless')

# Popen objects of the emulators this Python process started, kept so that they are reaped
# (no zombies, no "subprocess is still running" ResourceWarning) when `stop` runs in-process.
_CHILDREN: dict[int, subprocess.Popen] = {}


class LocalStackError(Exception):
  """A failure with a one-line, actionable message; `exit_code` is what the CLI returns."""

  def __init__(self, message: str, exit_code: int = 1):
    super().__init__(message)
    self.exit_code = exit_code


class PreconditionError(LocalStackError):
  """A missing prerequisite (Java, SDK, emulator, port), found before anything is started."""

  def __init__(self, message: str):
    super().__init__(message, exit_code=2)


@dataclasses.dataclass(frozen=True)
class Tools:
  """Where the emulator programs live on this machine."""
  java: str
  sdk_root: pathlib.Path
  bqemulator: str
  redis_server: str = 'redis-server'


@dataclasses.dataclass(frozen=True)
class Launch:
  """How to start one emulator: its command line and the string its /proc cmdline must hold."""
  name: str
  argv: list[str]
  ports: dict[str, int]
  marker: str


# --------------------------------------------------------------------------------------------
# Small pure helpers.


def log(message: str) -> None:
  """Prints one progress line to stderr."""
  print(f'localstack: {message}', file=sys.stderr, flush=True)


def project_id() -> str:
  """The local project id: LOCALSTACK_PROJECT, else `PROJECT`."""
  return os.environ.get('LOCALSTACK_PROJECT') or PROJECT


def default_state_dir() -> pathlib.Path:
  """LOCALSTACK_STATE_DIR, else .localstack/demo relative to the current directory."""
  return pathlib.Path(os.environ.get('LOCALSTACK_STATE_DIR') or DEFAULT_STATE_DIR)


def start_timeout() -> float:
  """Seconds to wait for the emulators to answer: LOCALSTACK_TIMEOUT, else 90."""
  raw = os.environ.get('LOCALSTACK_TIMEOUT')
  if not raw:
    return DEFAULT_TIMEOUT
  try:
    value = float(raw)
  except ValueError:
    value = -1.0
  if value <= 0:
    raise PreconditionError(f'LOCALSTACK_TIMEOUT={raw!r} is not a positive number of seconds')
  return value


def main_port(component: str, ports: Mapping[str, int]) -> int:
  """The port clients talk to (the first one listed in `PORTS`)."""
  return int(ports[PORTS[component][0][0]])


def endpoint(component: str, ports: Mapping[str, int]) -> str:
  """The address clients use, as it appears in the exported environment."""
  address = f'{HOST}:{main_port(component, ports)}'
  if component == 'redis':
    return f'redis://{address}/0'
  return f'http://{address}' if component == 'bigquery' else address


def probe_urls(component: str, port: int, project: str) -> list[str]:
  """The requests that must all succeed for `component` to count as ready."""
  base = f'http://{HOST}:{port}'
  if component == 'pubsub':
    return [f'{base}/v1/projects/{project}/topics']
  if component == 'firestore':
    return [f'{base}/v1/projects/{project}/databases/%28default%29/documents/readiness/probe']
  if component == 'bigquery':
    return [f'{base}/healthz', f'{base}/bigquery/v2/projects/{project}/datasets']
  raise ValueError(f'unknown component {component!r}')


def answer_ok(component: str, status: int, body: bytes) -> bool:
  """Whether an HTTP answer means ready; Firestore answers a missing document with a JSON 404."""
  if status == 200:
    return True
  if component != 'firestore' or status != 404:
    return False
  try:
    error = json.loads(body.decode('utf-8'))['error']
    return int(error['code']) == 404
  except (ValueError, KeyError, TypeError, UnicodeDecodeError):
    return False


def pubsub_command(sdk_root: pathlib.Path, port: int) -> list[str]:
  """The Pub/Sub emulator command line (a shell launcher that execs java)."""
  launcher = sdk_root / 'platform' / 'pubsub-emulator' / 'bin' / 'cloud-pubsub-emulator'
  return [str(launcher), f'--host={HOST}', f'--port={port}']


def firestore_command(java: str, sdk_root: pathlib.Path, port: int) -> list[str]:
  """The Firestore emulator command line."""
  jar = sdk_root / 'platform' / 'cloud-firestore-emulator' / 'cloud-firestore-emulator.jar'
  return [java, '-cp', str(jar), FIRESTORE_MAIN, 'start', f'--host={HOST}', f'--port={port}']


def redis_command(redis_server: str, port: int) -> list[str]:
  """The Redis server command line: loopback only, nothing saved to disk (like the emulators,
  the stack keeps its data in memory), no daemonizing (the stack owns the process)."""
  return [redis_server, '--bind', HOST, '--port', str(port), '--save', '', '--appendonly', 'no',
          '--daemonize', 'no', '--protected-mode', 'yes']


def redis_answers(port: int, timeout: float) -> bool:
  """Whether a Redis server on `port` answers PING with PONG (RESP, one round trip)."""
  try:
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
      sock.sendall(b'PING\r\n')
      return sock.recv(64).startswith(b'+PONG')
  except OSError:
    return False


def bigquery_command(bqemulator: str, rest_port: int, grpc_port: int, project: str) -> list[str]:
  """The BigQuery emulator command line."""
  return [
      bqemulator, 'start', '--rest-host', HOST, '--rest-port', str(rest_port),
      '--grpc-host', HOST, '--grpc-port', str(grpc_port), '--ephemeral', '--project', project]


def build_launch(
    component: str, tools: Tools, ports: Mapping[str, int], project: str) -> Launch:
  """The command line for `component` and the string that identifies its process later.

  The Pub/Sub launcher execs java with a jar under its own folder, so its marker is that folder
  (resolved the way the launcher resolves it); the others keep their jar or script on the
  command line.
  """
  ports = dict(ports)
  if component == 'pubsub':
    argv = pubsub_command(tools.sdk_root, ports['http'])
    marker = os.path.realpath(tools.sdk_root / 'platform' / 'pubsub-emulator')
  elif component == 'firestore':
    argv = firestore_command(tools.java, tools.sdk_root, ports['http'])
    marker = argv[2]
  elif component == 'bigquery':
    argv = bigquery_command(tools.bqemulator, ports['rest'], ports['grpc'], project)
    marker = tools.bqemulator
  elif component == 'redis':
    argv = redis_command(tools.redis_server, ports['tcp'])
    # Redis rewrites its process title to `redis-server 127.0.0.1:PORT`.
    marker = f'{HOST}:{ports["tcp"]}'
  else:
    raise ValueError(f'unknown component {component!r}')
  return Launch(component, argv, ports, marker)


def env_mapping(state: Mapping[str, Any]) -> dict[str, str]:
  """The client environment for a stack described by `state`."""
  components = state['components']
  project = state['project']
  return {
      'PUBSUB_EMULATOR_HOST': endpoint('pubsub', components['pubsub']['ports']),
      'PUBSUB_PROJECT_ID': project,
      'FIRESTORE_EMULATOR_HOST': endpoint('firestore', components['firestore']['ports']),
      'BIGQUERY_EMULATOR_HOST': endpoint('bigquery', components['bigquery']['ports']),
      'REDIS_URL': endpoint('redis', components['redis']['ports']),
      'GOOGLE_CLOUD_PROJECT': project,
  }


def export_lines(env: Mapping[str, str]) -> list[str]:
  """Shell `export` lines for `env`, quoted for eval."""
  return [f'export {name}={shlex.quote(value)}' for name, value in env.items()]


def tail_lines(path: pathlib.Path, count: int = LOG_TAIL_LINES) -> list[str]:
  """The last `count` lines of a (possibly missing) log file."""
  try:
    data = path.read_bytes()
  except OSError:
    return []
  return data.decode('utf-8', errors='replace').splitlines()[-count:]


def parse_proc_stat(text: str) -> tuple[str, int]:
  """(state letter, process group id) from the text of /proc/<pid>/stat."""
  fields = text[text.rindex(')') + 2:].split()
  return fields[0], int(fields[2])


def utc_now() -> str:
  """The current time as an ISO 8601 UTC timestamp."""
  return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())


# --------------------------------------------------------------------------------------------
# Ports.


def port_is_free(port: int) -> bool:
  """Whether a listening socket could be bound to 127.0.0.1:port right now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    try:
      sock.bind((HOST, port))
    except OSError:
      return False
  return True


def free_ports(count: int) -> list[int]:
  """`count` distinct free ports (all sockets are held open together, then closed)."""
  with contextlib.ExitStack() as stack:
    ports = []
    for _ in range(count):
      sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
      sock.bind((HOST, 0))
      ports.append(sock.getsockname()[1])
    return ports


def fixed_port(variable: str) -> int | None:
  """The port an environment variable fixes, or None."""
  raw = os.environ.get(variable)
  if not raw:
    return None
  if not raw.isdigit() or not 0 < int(raw) < 65536:
    raise PreconditionError(f'{variable}={raw!r} is not a TCP port number')
  return int(raw)


def allocate_ports(components: Sequence[str]) -> dict[str, dict[str, int]]:
  """Ports for `components`: the fixed ones (checked free) and fresh free ones for the rest."""
  wanted = [(c, name, fixed_port(var), var) for c in components for name, var in PORTS[c]]
  for _, _, port, var in wanted:
    if port is not None and not port_is_free(port):
      raise PreconditionError(f'port {HOST}:{port} ({var}) is already in use: pick another')
  fixed = {port for _, _, port, _ in wanted if port is not None}
  fresh = iter(p for p in free_ports(len(wanted) + len(fixed)) if p not in fixed)
  result: dict[str, dict[str, int]] = {c: {} for c in components}
  for component, name, port, _ in wanted:
    result[component][name] = port if port is not None else next(fresh)
  return result


# --------------------------------------------------------------------------------------------
# Preconditions.


def find_sdk_root() -> pathlib.Path:
  """CLOUDSDK_ROOT, else what `gcloud info` says, else /usr/lib/google-cloud-sdk."""
  configured = os.environ.get('CLOUDSDK_ROOT')
  if configured:
    if not pathlib.Path(configured).is_dir():
      raise PreconditionError(f'CLOUDSDK_ROOT={configured} is not a directory')
    return pathlib.Path(configured)
  reported = gcloud_sdk_root()
  if reported is not None:
    return reported
  if DEFAULT_SDK_ROOT.is_dir():
    return DEFAULT_SDK_ROOT
  raise PreconditionError(
      'Google Cloud SDK not found: apt-get install google-cloud-cli, or set CLOUDSDK_ROOT')


def gcloud_sdk_root() -> pathlib.Path | None:
  """The SDK root `gcloud info` reports, or None when gcloud is missing or fails."""
  gcloud = shutil.which('gcloud')
  if gcloud is None:
    return None
  try:
    result = subprocess.run(
        [gcloud, 'info', '--format=value(installation.sdk_root)'],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        env={**os.environ, 'CLOUDSDK_CORE_DISABLE_PROMPTS': '1'}, check=False)
  except (OSError, subprocess.TimeoutExpired):
    return None
  root = result.stdout.strip()
  if result.returncode != 0 or not root or not pathlib.Path(root).is_dir():
    return None
  return pathlib.Path(root)


def find_bqemulator() -> str:
  """BQEMULATOR_BIN, else .venv-bq/bin/bqemulator, as an absolute path."""
  configured = os.environ.get('BQEMULATOR_BIN')
  path = configured or str(DEFAULT_BQ_VENV / 'bin' / 'bqemulator')
  if not (os.path.isfile(path) and os.access(path, os.X_OK)):
    hint = ' (from BQEMULATOR_BIN)' if configured else ''
    raise PreconditionError(f'bqemulator not found at {path}{hint}: run `make venv`')
  return os.path.abspath(path)


def check_emulators(sdk_root: pathlib.Path) -> None:
  """Fails unless the Pub/Sub and Firestore emulators are installed under the SDK."""
  platform = sdk_root / 'platform'
  pubsub = pubsub_command(sdk_root, 0)[0]
  if not os.access(pubsub, os.X_OK):
    raise PreconditionError(
        f'Pub/Sub emulator missing ({platform / "pubsub-emulator"}): apt-get install '
        'google-cloud-cli-pubsub-emulator (or gcloud components install pubsub-emulator)')
  firestore = firestore_command('java', sdk_root, 0)[2]
  if not os.path.isfile(firestore):
    raise PreconditionError(
        f'Firestore emulator missing ({platform / "cloud-firestore-emulator"}): apt-get install '
        'google-cloud-cli-firestore-emulator (or gcloud components install '
        'cloud-firestore-emulator)')


def find_tools() -> Tools:
  """Checks every prerequisite, in order, and says where the programs are."""
  java = shutil.which('java')
  if java is None:
    raise PreconditionError(JAVA_MISSING)
  sdk_root = find_sdk_root()
  check_emulators(sdk_root)
  return Tools(java=java, sdk_root=sdk_root, bqemulator=find_bqemulator(),
               redis_server=find_redis_server())


def find_redis_server() -> str:
  """REDIS_SERVER_BIN, else redis-server on the PATH, as an absolute path."""
  configured = os.environ.get('REDIS_SERVER_BIN')
  path = configured or shutil.which('redis-server')
  if not path or not (os.path.isfile(path) and os.access(path, os.X_OK)):
    raise PreconditionError(REDIS_MISSING + (f' ({configured} from REDIS_SERVER_BIN)'
                                             if configured else ''))
  return os.path.abspath(path)


# --------------------------------------------------------------------------------------------
# State file.


def state_path(state_dir: pathlib.Path) -> pathlib.Path:
  """Where the state file of `state_dir` lives."""
  return pathlib.Path(state_dir) / STATE_FILE


def load_state(state_dir: pathlib.Path) -> dict[str, Any] | None:
  """The recorded state, or None when there is none."""
  path = state_path(state_dir)
  try:
    text = path.read_text()
  except FileNotFoundError:
    return None
  try:
    state = json.loads(text)
    if not isinstance(state.get('components'), dict):
      raise ValueError('no components')
  except (ValueError, AttributeError) as err:
    raise LocalStackError(
        f'state file {path} is unreadable ({err}): check `ps` for emulators, then delete it')
  return state


def save_state(state_dir: pathlib.Path, state: Mapping[str, Any]) -> None:
  """Writes the state file atomically, or removes it when no component is recorded."""
  path = state_path(state_dir)
  if not state.get('components'):
    path.unlink(missing_ok=True)
    return
  temp = path.with_name(f'.{STATE_FILE}.{os.getpid()}.tmp')
  with open(temp, 'w') as handle:
    json.dump(state, handle, indent=2, sort_keys=True)
    handle.write('\n')
    handle.flush()
    os.fsync(handle.fileno())
  os.replace(temp, path)


@contextlib.contextmanager
def locked(state_dir: pathlib.Path) -> Iterator[None]:
  """Serializes start and stop calls on one state dir (e.g. two shells, or test workers)."""
  with open(pathlib.Path(state_dir) / LOCK_FILE, 'a') as handle:
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# Processes.


def reap(pid: int) -> None:
  """Collects the exit status of an emulator this Python process started, if it has ended.

  Its Popen object stays in `_CHILDREN` (keeping the exit code) until `forget_child`.
  """
  child = _CHILDREN.get(pid)
  if child is not None:
    child.poll()


def forget_child(pid: int) -> None:
  """Reaps and drops the Popen object of an emulator this Python process started."""
  child = _CHILDREN.pop(pid, None)
  if child is not None and child.poll() is None:
    with contextlib.suppress(subprocess.TimeoutExpired):
      child.wait(timeout=1)


def proc_stat(pid: int) -> tuple[str, int] | None:
  """(state letter, process group) of a process, or None if there is no such process."""
  try:
    return parse_proc_stat(pathlib.Path(f'/proc/{pid}/stat').read_text())
  except (OSError, ValueError, IndexError):
    return None


def pid_alive(pid: int) -> bool:
  """Whether `pid` is a live (not zombie) process."""
  reap(pid)
  stat = proc_stat(pid)
  return stat is not None and stat[0] not in 'ZXx'


def proc_cmdline(pid: int) -> str:
  """The command line of `pid`, arguments joined by spaces ('' if unreadable)."""
  try:
    raw = pathlib.Path(f'/proc/{pid}/cmdline').read_bytes()
  except OSError:
    return ''
  return raw.replace(b'\0', b' ').decode('utf-8', errors='replace')


def is_ours(entry: Mapping[str, Any]) -> bool:
  """Whether the recorded process still runs and is still the emulator we started."""
  pid = int(entry['pid'])
  if not pid_alive(pid):
    return False
  stat = proc_stat(pid)
  return (stat is not None and stat[1] == int(entry['pgid'])
          and entry['marker'] in proc_cmdline(pid))


def group_members(pgid: int) -> list[int]:
  """Live (not zombie) processes in process group `pgid`."""
  members = []
  for proc in pathlib.Path('/proc').iterdir():
    if not proc.name.isdigit():
      continue
    pid = int(proc.name)
    reap(pid)
    stat = proc_stat(pid)
    if stat is not None and stat[1] == pgid and stat[0] not in 'ZXx':
      members.append(pid)
  return members


def wait_group_gone(pgid: int, seconds: float) -> bool:
  """Waits up to `seconds` for process group `pgid` to be empty; True if it is."""
  deadline = time.monotonic() + seconds
  while group_members(pgid):
    if time.monotonic() >= deadline:
      return False
    time.sleep(0.1)
  return True


def signal_group(pgid: int, signum: int) -> None:
  """Sends `signum` to process group `pgid`; an already empty group is fine."""
  try:
    os.killpg(pgid, signum)
  except ProcessLookupError:
    pass


def terminate_group(pgid: int) -> bool:
  """SIGTERM to the group, up to 10 s of grace, then SIGKILL; True once the group is gone."""
  signal_group(pgid, signal.SIGTERM)
  if wait_group_gone(pgid, STOP_GRACE_SECONDS):
    return True
  signal_group(pgid, signal.SIGKILL)
  return wait_group_gone(pgid, KILL_WAIT_SECONDS)


def launch(spec: Launch, state_dir: pathlib.Path) -> dict[str, Any]:
  """Starts one emulator in its own session and returns its state entry."""
  log_path = pathlib.Path(state_dir) / f'{spec.name}.log'
  with open(log_path, 'wb') as log_file:
    process = subprocess.Popen(
        spec.argv, start_new_session=True, stdout=log_file, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, cwd=state_dir)
  _CHILDREN[process.pid] = process
  try:
    pgid = os.getpgid(process.pid)
  except ProcessLookupError:
    pgid = process.pid
  return {
      'pid': process.pid,
      'pgid': pgid,
      'ports': dict(spec.ports),
      'endpoint': endpoint(spec.name, spec.ports),
      'command': list(spec.argv),
      'marker': spec.marker,
      'started_at': utc_now(),
      'log': str(log_path),
  }


# --------------------------------------------------------------------------------------------
# Readiness.


def http_get(url: str, timeout: float) -> tuple[int, bytes] | None:
  """(status, body) of a GET that ignores any proxy settings, or None if nothing answered."""
  opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
  try:
    with opener.open(url, timeout=timeout) as response:
      return response.status, response.read(65536)
  except urllib.error.HTTPError as err:
    with err:
      return err.code, err.read(65536)
  except (urllib.error.URLError, OSError, http.client.HTTPException):
    return None


def is_ready(component: str, entry: Mapping[str, Any], project: str,
             timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
  """Whether the emulator answers every readiness request."""
  port = main_port(component, entry['ports'])
  if component == 'redis':
    return redis_answers(port, timeout)
  for url in probe_urls(component, port, project):
    answer = http_get(url, timeout)
    if answer is None or not answer_ok(component, *answer):
      return False
  return True


def is_healthy(component: str, entry: Mapping[str, Any] | None, project: str) -> bool:
  """Whether the recorded emulator is alive, still ours, and answering."""
  return entry is not None and is_ours(entry) and is_ready(component, entry, project)


def show_log_tail(component: str, log_path: pathlib.Path) -> None:
  """Prints the end of an emulator's log to stderr."""
  lines = tail_lines(log_path)
  log(f'last {len(lines)} lines of {log_path}:' if lines else f'{log_path} is empty')
  for line in lines:
    print(f'  {component}| {line}', file=sys.stderr)
  sys.stderr.flush()


def wait_ready(state: Mapping[str, Any], components: Sequence[str], timeout: float) -> None:
  """Polls all `components` together until each answers; fails fast if one exits."""
  started = time.monotonic()
  pending = list(components)
  while pending:
    for component in list(pending):
      entry = state['components'][component]
      check_still_running(component, entry)
      remaining = max(0.1, timeout - (time.monotonic() - started))
      if is_ready(component, entry, state['project'], min(PROBE_TIMEOUT_SECONDS, remaining)):
        log(f'{component} ready in {time.monotonic() - started:.1f} s')
        pending.remove(component)
    if pending and time.monotonic() - started > timeout:
      for component in pending:
        show_log_tail(component, pathlib.Path(state['components'][component]['log']))
      raise LocalStackError(
          f'timed out after {timeout:.0f} s waiting for {", ".join(pending)} to answer '
          f'(see the logs in {pathlib.Path(state["components"][pending[0]]["log"]).parent}; '
          'LOCALSTACK_TIMEOUT raises the limit)')
    if pending:
      time.sleep(POLL_SECONDS)


def check_still_running(component: str, entry: Mapping[str, Any]) -> None:
  """Fails with the end of its log if an emulator we just started has exited."""
  if pid_alive(int(entry['pid'])):
    return
  child = _CHILDREN.get(int(entry['pid']))
  code = '' if child is None or child.returncode is None else f' with code {child.returncode}'
  show_log_tail(component, pathlib.Path(entry['log']))
  raise LocalStackError(f'{component} exited{code} during start-up: see {entry["log"]}')


# --------------------------------------------------------------------------------------------
# Python API.


def start(state_dir: pathlib.Path, timeout: float | None = None) -> dict[str, str]:
  """Starts whatever part of the stack is not running and returns the client environment.

  Idempotent: an emulator that the state file records, that is alive, still ours and answering
  is left alone. Everything this call launched is stopped again if the call fails.
  """
  state_dir = pathlib.Path(state_dir).absolute()
  state_dir.mkdir(parents=True, exist_ok=True)
  with locked(state_dir):
    state = current_state(state_dir)
    missing = [c for c in COMPONENTS if not keep_running(c, state)]
    if missing:
      limit = start_timeout() if timeout is None else timeout
      launch_missing(state_dir, state, missing, limit)
  log(f'stack ready (project {state["project"]}); '
      'eval "$(python -m scripts.localstack env)" exports its environment')
  return env_mapping(state)


def current_state(state_dir: pathlib.Path) -> dict[str, Any]:
  """The recorded state, checked against the requested project, or a fresh one."""
  project = project_id()
  state = load_state(state_dir)
  if state is None:
    return {'version': STATE_VERSION, 'project': project, 'components': {}}
  if state.get('project') != project and any(
      is_ours(entry) for entry in state['components'].values()):
    raise LocalStackError(
        f'the stack in {state_dir} runs project {state.get("project")}, not {project}: '
        'stop it first')
  state['project'] = project
  return state


def keep_running(component: str, state: dict[str, Any]) -> bool:
  """True if the recorded `component` is alive, still ours and answering."""
  entry = state['components'].get(component)
  if entry is None:
    return False
  if is_healthy(component, entry, state['project']):
    log(f'{component} already running on {entry["endpoint"]} (pid {entry["pid"]})')
    return True
  return False


def launch_missing(state_dir: pathlib.Path, state: dict[str, Any], missing: Sequence[str],
                   timeout: float) -> None:
  """Checks prerequisites, starts `missing`, waits for them; undoes the launches on failure."""
  tools = find_tools()
  ports = allocate_ports(missing)
  for component in missing:
    end_stale(component, state['components'].pop(component, None))
  launched: list[str] = []
  try:
    for component in missing:
      spec = build_launch(component, tools, ports[component], state['project'])
      log(f'starting {component} on {endpoint(component, spec.ports)}')
      state['components'][component] = launch(spec, state_dir)
      launched.append(component)
    save_state(state_dir, state)
    wait_ready(state, missing, timeout)
  except BaseException:
    undo_launches(state_dir, state, launched)
    raise


def end_stale(component: str, entry: Mapping[str, Any] | None) -> None:
  """Ends a recorded emulator that is still ours but no longer answers."""
  if entry is not None and is_ours(entry):
    log(f'{component} (pid {entry["pid"]}) is not answering; restarting it')
    terminate_group(int(entry['pgid']))


def undo_launches(state_dir: pathlib.Path, state: dict[str, Any],
                  launched: Sequence[str]) -> None:
  """Stops the emulators one failed `start` call launched and forgets them."""
  for component in launched:
    entry = state['components'].pop(component)
    log(f'stopping {component} (pid {entry["pid"]}) after the failed start')
    terminate_group(int(entry['pgid']))
    forget_child(int(entry['pid']))
  save_state(state_dir, state)


def stop(state_dir: pathlib.Path) -> None:
  """Ends exactly the processes the state file records (if still ours) and removes the file."""
  state_dir = pathlib.Path(state_dir).absolute()
  state = load_state(state_dir) if state_dir.is_dir() else None
  if not state or not state['components']:
    log(f'nothing to stop in {state_dir}')
    return
  with locked(state_dir):
    state = load_state(state_dir) or {'components': {}}
    stuck = [c for c, entry in sorted(state['components'].items()) if not stop_one(c, entry)]
    if stuck:
      raise LocalStackError(
          f'{", ".join(stuck)} did not exit after SIGKILL; state kept in {state_path(state_dir)}')
    state_path(state_dir).unlink(missing_ok=True)


def stop_one(component: str, entry: Mapping[str, Any]) -> bool:
  """Stops one recorded emulator if it is still ours; False only if it would not die."""
  pid = int(entry['pid'])
  if not pid_alive(pid):
    log(f'{component} (pid {pid}) was not running')
    return True
  if not is_ours(entry):
    log(f'{component}: pid {pid} is now another program; leaving it alone')
    return True
  log(f'stopping {component} (pid {pid})')
  started = time.monotonic()
  gone = terminate_group(int(entry['pgid']))
  if gone:
    forget_child(pid)
  if gone:
    log(f'{component} stopped in {time.monotonic() - started:.1f} s')
  return gone


def component_status(state_dir: pathlib.Path) -> dict[str, tuple[bool, str, str]]:
  """Per component: (running and answering, pid or '-', endpoint or '-')."""
  state = load_state(pathlib.Path(state_dir)) or {'project': project_id(), 'components': {}}
  result = {}
  for component in COMPONENTS:
    entry = state['components'].get(component)
    healthy = is_healthy(component, entry, state['project'])
    pid = str(entry['pid']) if entry and healthy else '-'
    result[component] = (healthy, pid, entry['endpoint'] if entry else '-')
  return result


def environment(state_dir: pathlib.Path) -> dict[str, str]:
  """The client environment of the running stack; LocalStackError if any part is down."""
  state = load_state(pathlib.Path(state_dir))
  down = [
      c for c in COMPONENTS
      if state is None or not is_healthy(c, state['components'].get(c), state['project'])]
  if down:
    raise LocalStackError(
        f'the local stack in {state_dir} is not running ({", ".join(down)} down): '
        'run `python -m scripts.localstack start`')
  return env_mapping(state)


# --------------------------------------------------------------------------------------------
# Command line.


def cmd_start(state_dir: pathlib.Path) -> int:
  """`start`: starts the stack."""
  start(state_dir)
  return 0


def cmd_stop(state_dir: pathlib.Path) -> int:
  """`stop`: stops the stack."""
  stop(state_dir)
  return 0


def cmd_status(state_dir: pathlib.Path) -> int:
  """`status`: one line per component; 0 if all run, 3 otherwise."""
  statuses = component_status(state_dir)
  for component, (running, pid, address) in statuses.items():
    word = 'running' if running else 'stopped'
    print(f'{component:<10} {word:<8} pid {pid:<8} {address}')
  return 0 if all(running for running, _, _ in statuses.values()) else 3


def cmd_env(state_dir: pathlib.Path) -> int:
  """`env`: export lines for eval."""
  print('\n'.join(export_lines(environment(state_dir))))
  return 0


COMMANDS: dict[str, Callable[[pathlib.Path], int]] = {
    'start': cmd_start, 'stop': cmd_stop, 'status': cmd_status, 'env': cmd_env}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """Parses the command line."""
  parser = argparse.ArgumentParser(
      prog='python -m scripts.localstack',
      description='Start, stop and inspect the local Pub/Sub, Firestore and BigQuery emulators.')
  parser.add_argument(
      '--state-dir', type=pathlib.Path, default=None,
      help=f'where state and logs live (default: $LOCALSTACK_STATE_DIR or {DEFAULT_STATE_DIR})')
  parser.add_argument('command', choices=sorted(COMMANDS))
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs one command; LocalStackError becomes a one-line message and its exit code."""
  args = parse_args(argv)
  state_dir = args.state_dir or default_state_dir()
  try:
    return COMMANDS[args.command](state_dir)
  except LocalStackError as err:
    log(f'error: {err}')
    return err.exit_code
  except KeyboardInterrupt:
    log('interrupted')
    return 130


if __name__ == '__main__':
  sys.exit(main())
