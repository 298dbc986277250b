"""The collector's settings (collector/config.py): each bad value is a ConfigError naming the
variable to fix, flags win over the environment, write keys rotate from their file and never show
in messages or reprs; and its pins and limits agree with the pipeline's and the connector's."""
import pathlib
import re

import pytest

from collector import events
from collector.config import ConfigError, KeyRing, Settings
from transforms.rules.events import DEFAULT_MAX_MESSAGE_BYTES

REPO = pathlib.Path(__file__).resolve().parents[2]
BASE = {'COLLECTOR_PROJECT': 'demo-local', 'COLLECTOR_TOPIC': 'events',
        'COLLECTOR_WRITE_KEYS': 'wk_web_0123:web'}


def settings(argv=(), **env) -> Settings:
  return Settings.from_sources(list(argv), {**BASE, **env})


def test_settings_from_the_environment():
  s = settings(COLLECTOR_WRITE_KEYS='wk_web_0123:web, wk_srv_0123:server',
               COLLECTOR_ALLOWED_ORIGINS='https://a.example, https://b.example',
               COLLECTOR_TRUSTED_PROXIES='10.0.0.0/8,2001:db8::1', COLLECTOR_TRUNCATE_IP='yes',
               COLLECTOR_PUBLISH_TIMEOUT_SECONDS='2.5', COLLECTOR_MAX_OUTSTANDING_MB='8',
               COLLECTOR_METRICS_TOKEN='metrics-secret-1')
  assert s.topic_path == 'projects/demo-local/topics/events'
  assert dict(s.write_keys) == {'wk_web_0123': 'web', 'wk_srv_0123': 'server'}
  assert s.allowed_origins == ('https://a.example', 'https://b.example')
  assert [str(n) for n in s.trusted_proxies] == ['10.0.0.0/8', '2001:db8::1/128']
  assert (s.truncate_ip, s.publish_timeout_seconds, s.max_outstanding_bytes) == (True, 2.5, 8 << 20)
  assert (s.port, s.body_timeout_seconds, s.host) == (8088, 10.0, '127.0.0.1')  # the defaults
  assert 'wk_' not in repr(s) and 'metrics-secret' not in repr(s)


def test_flags_win_over_the_environment_and_the_project_falls_back():
  s = settings(['--port', '9001', '--topic', 'flag-topic', '--write-keys', 'wk_flag_0123:app',
                '--truncate-ip', 'false'],
               COLLECTOR_PORT='9000', COLLECTOR_TRUNCATE_IP='true')
  assert (s.port, s.topic, dict(s.write_keys), s.truncate_ip) == (9001, 'flag-topic',
                                                                   {'wk_flag_0123': 'app'}, False)
  fallback = Settings.from_sources([], {'GOOGLE_CLOUD_PROJECT': 'gcp', 'COLLECTOR_TOPIC': 't',
                                        'COLLECTOR_WRITE_KEYS': 'wk_web_0123:web'})
  assert fallback.project == 'gcp'


@pytest.mark.parametrize('keys, words', [
    ('wk_web_0123', 'entry 1 is not key:source'),
    ('wk_web_0123:web,:web', 'entry 2 is not key:source'),
    ('short:web', 'at least 8'),
    ('wk web 0123:web', 'without spaces'),
    ('wk_web_01:23:web', "source '23:web'"),  # a key has no ':' (a Basic username ends there)
    ('wk_web_0123\u00e9:web', 'printable'),
    ('wk_web_0123:', "source ''"),
    ('wk_web_0123:we b', "source 'we b'"),
    ('wk_web_0123:web/prod', "source 'web/prod'"),
    ('wk_web_0123:' + 's' * 65, 'is not 1-64'),
    ('wk_web_0123:web,wk_web_0123:server', 'two sources'),
])
def test_malformed_write_keys_name_the_variable_and_never_the_key(keys, words):
  with pytest.raises(ConfigError, match='COLLECTOR_WRITE_KEYS') as caught:
    settings(COLLECTOR_WRITE_KEYS=keys)
  assert words in str(caught.value)
  assert 'wk_web' not in str(caught.value) and 'short' not in str(caught.value)


def test_a_malformed_key_file_names_the_variable_and_the_file(tmp_path):
  file = tmp_path / 'keys'
  file.write_text('# rotated\nwk_file_0123:web\nwk_file_4567 web\n')
  with pytest.raises(ConfigError, match='COLLECTOR_WRITE_KEYS_FILE .*keys: entry 2') as caught:
    settings(COLLECTOR_WRITE_KEYS='', COLLECTOR_WRITE_KEYS_FILE=str(file))
  assert 'wk_file' not in str(caught.value)
  with pytest.raises(ConfigError, match='COLLECTOR_WRITE_KEYS_FILE .* cannot be read'):
    settings(COLLECTOR_WRITE_KEYS='', COLLECTOR_WRITE_KEYS_FILE=str(tmp_path / 'missing'))
  # With keys in the environment too, the file is read when the key ring is built at start-up.
  with pytest.raises(ConfigError, match='COLLECTOR_WRITE_KEYS_FILE .* cannot be read'):
    KeyRing.from_settings(settings(COLLECTOR_WRITE_KEYS_FILE=str(tmp_path / 'missing')))
  file.write_bytes(b'\xff\xfe')
  with pytest.raises(ConfigError, match='COLLECTOR_WRITE_KEYS_FILE .* cannot be read'):
    settings(COLLECTOR_WRITE_KEYS='', COLLECTOR_WRITE_KEYS_FILE=str(file))


@pytest.mark.parametrize('env, words', [
    ({'COLLECTOR_PROJECT': ''}, 'COLLECTOR_PROJECT'),
    ({'COLLECTOR_TOPIC': ''}, 'COLLECTOR_TOPIC'),
    ({'COLLECTOR_WRITE_KEYS': ''}, 'COLLECTOR_WRITE_KEYS'),
    ({'COLLECTOR_PORT': 'http'}, 'COLLECTOR_PORT must be a number'),
    ({'COLLECTOR_PORT': '0'}, 'COLLECTOR_PORT must be between 1 and 65535'),
    ({'COLLECTOR_PORT': '65536'}, 'COLLECTOR_PORT'),
    ({'COLLECTOR_PUBLISH_TIMEOUT_SECONDS': 'nan'}, 'COLLECTOR_PUBLISH_TIMEOUT_SECONDS'),
    ({'COLLECTOR_PUBLISH_TIMEOUT_SECONDS': 'inf'}, 'COLLECTOR_PUBLISH_TIMEOUT_SECONDS'),
    ({'COLLECTOR_BODY_TIMEOUT_SECONDS': '0'}, 'COLLECTOR_BODY_TIMEOUT_SECONDS'),
    ({'COLLECTOR_MAX_OUTSTANDING_MB': '1.5'}, 'COLLECTOR_MAX_OUTSTANDING_MB must be a number'),
    ({'COLLECTOR_TRUNCATE_IP': 'maybe'}, 'COLLECTOR_TRUNCATE_IP must be true or false'),
    ({'COLLECTOR_TRUSTED_PROXIES': '10.0.0.0/8,lb.internal'},
     "COLLECTOR_TRUSTED_PROXIES: 'lb.internal'"),
])
def test_bad_settings_name_the_variable(env, words):
  with pytest.raises(ConfigError, match=re.escape(words)):
    settings(**env)


def test_a_key_file_alone_is_enough_and_an_empty_one_is_not(tmp_path):
  file = tmp_path / 'keys'
  file.write_text('wk_file_0123:web\n')
  assert settings(COLLECTOR_WRITE_KEYS='', COLLECTOR_WRITE_KEYS_FILE=str(file)).write_keys == {}
  file.write_text('# none yet\n')
  with pytest.raises(ConfigError, match='COLLECTOR_WRITE_KEYS'):
    settings(COLLECTOR_WRITE_KEYS='', COLLECTOR_WRITE_KEYS_FILE=str(file))


def test_key_ring_reload_picks_up_a_rotated_file_and_keeps_the_fixed_keys(tmp_path):
  file = tmp_path / 'keys'
  file.write_text('wk_old_0123:web\nwk_srv_0123:server\n')
  ring = KeyRing({'wk_env_0123': 'env'}, str(file))
  assert (ring.source('wk_old_0123'), ring.source('wk_env_0123')) == ('web', 'env')
  file.write_text('# rotated\nwk_new_0123:web\nwk_srv_0123:server\n')
  assert ring.source('wk_new_0123') is None  # nothing changes before the reload
  assert ring.reload() is True
  assert ring.source('wk_new_0123') == 'web' and ring.source('wk_old_0123') is None
  assert ring.source('wk_srv_0123') == 'server' and ring.source('wk_env_0123') == 'env'


@pytest.mark.parametrize('broken', ['wk_new_0123 web\n', 'short:web\n', '# nothing\n', None,
                                    b'\xff\xfe'])
def test_key_ring_keeps_the_old_keys_when_the_file_is_broken_or_gone(tmp_path, broken):
  file = tmp_path / 'keys'
  file.write_text('wk_old_0123:web\n')
  ring = KeyRing({}, str(file))
  if broken is None:
    file.unlink()
  elif isinstance(broken, bytes):
    file.write_bytes(broken)
  else:
    file.write_text(broken)
  assert ring.reload() is False
  assert ring.source('wk_old_0123') == 'web' and ring.source('wk_new_0123') is None


def test_key_ring_without_a_file_does_not_reload_and_refuses_what_is_not_a_key():
  ring = KeyRing({'wk_env_0123': 'env'})
  assert ring.reload() is False and ring.source('wk_env_0123') == 'env'
  for offered in (None, '', 7, ['wk_env_0123'], {'k': 'wk_env_0123'}, 'wk_env_012',
                  'wk_env_01234', 'WK_ENV_0123', '\ud800'):
    assert ring.source(offered) is None, offered


def pins(path: pathlib.Path) -> dict[str, str]:
  """{normalised package name: pinned version} of a requirements file."""
  found = {}
  for line in path.read_text().splitlines():
    line = line.split('#', 1)[0].strip()
    if not line:
      continue
    name, sep, version = line.partition('==')
    assert sep and version, f'{path.name}: {line!r} is not pinned exactly'
    found[re.sub(r'[-_.]+', '-', name.split('[')[0]).lower()] = version.strip()
  return found


def test_the_collectors_pins_are_the_pipelines_and_the_connectors_where_they_share_a_package():
  collector = pins(REPO / 'collector' / 'requirements.txt')
  for other in ('requirements.txt', 'connector/requirements.txt'):
    theirs = pins(REPO / other)
    shared = collector.keys() & theirs.keys()
    assert shared, f'no package shared with {other}: is this check still reading the right file?'
    assert {n: collector[n] for n in shared} == {n: theirs[n] for n in shared}, other


def test_the_event_limit_is_the_pipelines_message_limit():
  assert events.MAX_EVENT_BYTES == DEFAULT_MAX_MESSAGE_BYTES == 32768


TRACKING = {'COLLECTOR_TRACKING_KEYS': 'k1:' + 's' * 32,
            'COLLECTOR_TRACKING_LANDING_URL': 'https://shop.example.com/'}


def test_tracking_is_off_unless_keys_are_set_and_then_needs_a_landing_url():
  assert Settings.from_sources([], BASE).tracking is None
  tracking = Settings.from_sources([], {**BASE, **TRACKING}).tracking
  assert tracking.landing_url == 'https://shop.example.com/' and tracking.source == 'email'
  assert tracking.fast_click_seconds == 10 and tracking.keys.signing == 'k1'
  assert 's' * 32 not in repr(Settings.from_sources([], {**BASE, **TRACKING}))


@pytest.mark.parametrize('env, words', [
    ({'COLLECTOR_TRACKING_KEYS': 'k1:' + 's' * 32}, 'COLLECTOR_TRACKING_LANDING_URL'),
    ({**TRACKING, 'COLLECTOR_TRACKING_LANDING_URL': 'javascript:alert(1)'},
     'COLLECTOR_TRACKING_LANDING_URL'),
    ({**TRACKING, 'COLLECTOR_TRACKING_LANDING_URL': '/relative'}, 'COLLECTOR_TRACKING_LANDING_URL'),
    ({'COLLECTOR_TRACKING_LANDING_URL': 'https://shop.example.com/'}, 'COLLECTOR_TRACKING_KEYS'),
    ({**TRACKING, 'COLLECTOR_TRACKING_KEYS': 'k1:short'}, 'COLLECTOR_TRACKING_KEYS'),
    ({**TRACKING, 'COLLECTOR_TRACKING_SOURCE': 'bad source'}, 'COLLECTOR_TRACKING_SOURCE'),
    ({**TRACKING, 'COLLECTOR_FAST_CLICK_SECONDS': '-1'}, 'COLLECTOR_FAST_CLICK_SECONDS'),
])
def test_bad_tracking_settings_name_the_variable_and_never_the_secret(env, words):
  with pytest.raises(ConfigError) as err:
    Settings.from_sources([], {**BASE, **env})
  assert words in str(err.value) and 's' * 32 not in str(err.value)
