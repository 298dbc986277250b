"""Fast tests of the pure helpers in scripts/localstack.py (no emulator is started)."""
import json
import os
import pathlib
import shlex
import subprocess

import pytest

from scripts import localstack

SDK = pathlib.Path('/sdk')


def _state(project='demo-local'):
  return {
      'version': 1, 'project': project,
      'components': {
          'pubsub': {'ports': {'http': 8085}},
          'firestore': {'ports': {'http': 8086}},
          'bigquery': {'ports': {'rest': 9050, 'grpc': 9060}},
          'redis': {'ports': {'tcp': 6390}},
      }}


def test_env_mapping_has_exactly_the_client_variables():
  assert localstack.env_mapping(_state()) == {
      'PUBSUB_EMULATOR_HOST': '127.0.0.1:8085',
      'PUBSUB_PROJECT_ID': 'demo-local',
      'FIRESTORE_EMULATOR_HOST': '127.0.0.1:8086',
      'BIGQUERY_EMULATOR_HOST': 'http://127.0.0.1:9050',
      'REDIS_URL': 'redis://127.0.0.1:6390/0',
      'GOOGLE_CLOUD_PROJECT': 'demo-local',
  }


def test_export_lines_survive_a_shell_eval():
  env = {'A': 'plain', 'B': "it's quoted"}
  lines = localstack.export_lines(env)
  assert lines[0] == 'export A=plain'
  script = '\n'.join(lines) + '\nprintf %s "$B"'
  assert subprocess.run(['sh', '-c', script], capture_output=True, text=True).stdout == env['B']
  assert shlex.split(lines[1]) == ['export', "B=it's quoted"]


def test_probe_urls_bind_loopback_and_quote_the_default_database():
  assert localstack.probe_urls('pubsub', 1, 'p') == ['http://127.0.0.1:1/v1/projects/p/topics']
  [firestore] = localstack.probe_urls('firestore', 2, 'p')
  assert firestore.startswith('http://127.0.0.1:2/v1/projects/p/databases/%28default%29/')
  assert localstack.probe_urls('bigquery', 3, 'p') == [
      'http://127.0.0.1:3/healthz', 'http://127.0.0.1:3/bigquery/v2/projects/p/datasets']
  with pytest.raises(ValueError):
    localstack.probe_urls('spanner', 4, 'p')


@pytest.mark.parametrize('component,status,body,expected', [
    ('pubsub', 200, b'{}', True),
    ('pubsub', 404, b'{"error": {"code": 404}}', False),
    ('bigquery', 503, b'', False),
    ('firestore', 200, b'{}', True),
    ('firestore', 404, b'{"error": {"code": 404, "status": "NOT_FOUND"}}', True),
    ('firestore', 404, b'<html>not found</html>', False),
    ('firestore', 404, b'{"error": "flat"}', False),
    ('firestore', 500, b'{"error": {"code": 500}}', False),
])
def test_answer_ok(component, status, body, expected):
  assert localstack.answer_ok(component, status, body) is expected


def test_commands_bind_loopback_only():
  tools = localstack.Tools(java='/usr/bin/java', sdk_root=SDK, bqemulator='/venv/bin/bqemulator')
  pubsub = localstack.build_launch('pubsub', tools, {'http': 1}, 'p')
  assert pubsub.argv == [
      '/sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator', '--host=127.0.0.1', '--port=1']
  assert pubsub.marker == os.path.realpath('/sdk/platform/pubsub-emulator')
  firestore = localstack.build_launch('firestore', tools, {'http': 2}, 'p')
  assert firestore.argv[:3] == [
      '/usr/bin/java', '-cp', '/sdk/platform/cloud-firestore-emulator/cloud-firestore-emulator.jar']
  assert firestore.argv[-3:] == ['start', '--host=127.0.0.1', '--port=2']
  assert firestore.marker == firestore.argv[2]
  bigquery = localstack.build_launch('bigquery', tools, {'rest': 3, 'grpc': 4}, 'p')
  assert bigquery.argv == [
      '/venv/bin/bqemulator', 'start', '--rest-host', '127.0.0.1', '--rest-port', '3',
      '--grpc-host', '127.0.0.1', '--grpc-port', '4', '--ephemeral', '--project', 'p']
  assert bigquery.marker == '/venv/bin/bqemulator'
  redis = localstack.build_launch('redis', tools, {'tcp': 5}, 'p')
  assert redis.argv[:5] == ['redis-server', '--bind', '127.0.0.1', '--port', '5']
  assert ['--save', ''] == redis.argv[5:7] and '--daemonize' in redis.argv
  assert redis.marker == '127.0.0.1:5'  # the process title Redis sets


def test_redis_probe_is_false_when_nothing_answers():
  [port] = localstack.free_ports(1)
  assert localstack.redis_answers(port, 0.5) is False


def test_missing_redis_server_names_the_package(monkeypatch, tmp_path):
  monkeypatch.setenv('REDIS_SERVER_BIN', str(tmp_path / 'nope'))
  with pytest.raises(localstack.PreconditionError, match='apt-get install redis-server') as raised:
    localstack.find_redis_server()
  assert raised.value.exit_code == 2


def test_parse_proc_stat_handles_spaces_and_parentheses_in_the_name():
  text = '4242 (java (x) y) S 1 4240 4240 0 -1 4194560 1 0 0 0'
  assert localstack.parse_proc_stat(text) == ('S', 4240)


def test_allocate_ports_gives_distinct_ports_and_honours_fixed_ones(monkeypatch):
  for variable in ('PUBSUB_PORT', 'FIRESTORE_PORT', 'BIGQUERY_PORT', 'BIGQUERY_GRPC_PORT',
                   'REDIS_PORT'):
    monkeypatch.delenv(variable, raising=False)
  [fixed] = localstack.free_ports(1)
  monkeypatch.setenv('FIRESTORE_PORT', str(fixed))
  ports = localstack.allocate_ports(localstack.COMPONENTS)
  assert ports['firestore'] == {'http': fixed}
  assert set(ports['bigquery']) == {'rest', 'grpc'}
  every = [port for component in ports.values() for port in component.values()]
  assert len(set(every)) == len(every) == 5


@pytest.mark.parametrize('value', ['abc', '0', '70000'])
def test_a_bad_fixed_port_is_a_precondition_error(monkeypatch, value):
  monkeypatch.setenv('PUBSUB_PORT', value)
  with pytest.raises(localstack.PreconditionError) as raised:
    localstack.allocate_ports(['pubsub'])
  assert raised.value.exit_code == 2


def test_missing_java_is_reported_first(monkeypatch, tmp_path):
  monkeypatch.setenv('PATH', str(tmp_path))
  with pytest.raises(localstack.PreconditionError) as raised:
    localstack.find_tools()
  assert str(raised.value) == localstack.JAVA_MISSING
  assert raised.value.exit_code == 2


def test_missing_emulators_name_the_package(tmp_path):
  (tmp_path / 'platform').mkdir()
  with pytest.raises(localstack.PreconditionError, match='google-cloud-cli-pubsub-emulator'):
    localstack.check_emulators(tmp_path)
  launcher = tmp_path / 'platform' / 'pubsub-emulator' / 'bin' / 'cloud-pubsub-emulator'
  launcher.parent.mkdir(parents=True)
  launcher.write_text('#!/bin/sh\n')
  launcher.chmod(0o755)
  with pytest.raises(localstack.PreconditionError, match='google-cloud-cli-firestore-emulator'):
    localstack.check_emulators(tmp_path)


def test_missing_bqemulator_says_make_venv(monkeypatch, tmp_path):
  monkeypatch.setenv('BQEMULATOR_BIN', str(tmp_path / 'bqemulator'))
  with pytest.raises(localstack.PreconditionError, match='make venv'):
    localstack.find_bqemulator()


def test_state_round_trip_is_atomic_and_empty_state_removes_the_file(tmp_path):
  assert localstack.load_state(tmp_path) is None
  localstack.save_state(tmp_path, _state())
  assert localstack.load_state(tmp_path) == _state()
  assert sorted(p.name for p in tmp_path.iterdir()) == ['state.json']
  localstack.save_state(tmp_path, {'components': {}})
  assert not (tmp_path / 'state.json').exists()


def test_an_unreadable_state_file_is_a_clear_error(tmp_path):
  (tmp_path / 'state.json').write_text('{not json')
  with pytest.raises(localstack.LocalStackError, match='unreadable'):
    localstack.load_state(tmp_path)


def test_tail_lines(tmp_path):
  log = tmp_path / 'x.log'
  log.write_text(''.join(f'line {i}\n' for i in range(30)))
  assert localstack.tail_lines(log) == [f'line {i}' for i in range(10, 30)]
  assert localstack.tail_lines(tmp_path / 'missing.log') == []


def test_timeout_and_state_dir_come_from_the_environment(monkeypatch):
  monkeypatch.delenv('LOCALSTACK_TIMEOUT', raising=False)
  assert localstack.start_timeout() == 90.0
  monkeypatch.setenv('LOCALSTACK_TIMEOUT', '12.5')
  assert localstack.start_timeout() == 12.5
  monkeypatch.setenv('LOCALSTACK_TIMEOUT', '-1')
  with pytest.raises(localstack.PreconditionError):
    localstack.start_timeout()
  monkeypatch.delenv('LOCALSTACK_STATE_DIR', raising=False)
  assert localstack.default_state_dir() == pathlib.Path('.localstack/demo')
  monkeypatch.setenv('LOCALSTACK_STATE_DIR', '/tmp/elsewhere')
  assert localstack.default_state_dir() == pathlib.Path('/tmp/elsewhere')


def test_cli_without_a_stack(tmp_path, capsys):
  assert localstack.main(['--state-dir', str(tmp_path), 'status']) == 3
  assert 'stopped' in capsys.readouterr().out
  assert localstack.main(['--state-dir', str(tmp_path), 'env']) == 1
  captured = capsys.readouterr()
  assert captured.out == ''
  assert len(captured.err.strip().splitlines()) == 1
  assert localstack.main(['--state-dir', str(tmp_path / 'none'), 'stop']) == 0
  assert 'nothing to stop' in capsys.readouterr().err


def test_stop_leaves_a_process_that_is_not_ours_alone(tmp_path):
  state = _state()
  for entry in state['components'].values():
    entry.update(pid=os.getpid(), pgid=os.getpgid(0), marker='/no/such/emulator.jar',
                 endpoint='x', log='x')
  (tmp_path / 'state.json').write_text(json.dumps(state))
  localstack.stop(tmp_path)  # would kill this very test run if it ignored the marker
  assert not (tmp_path / 'state.json').exists()
