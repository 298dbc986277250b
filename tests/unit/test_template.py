"""The Dataflow flex template (templates/), checked without a cloud: metadata.json against the job's
options, the Dockerfile against requirements.txt and the repository, the build and run scripts by
their dry runs, and the package as the image installs it (a wheel in a fresh virtual environment)."""
import argparse
import importlib.util
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import apache_beam as beam
import pytest
import setuptools
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import graph
from pipeline import run as run_module
from pipeline.options import PersonalizationOptions
from templates import main as template_main
from transforms.rules import events as event_rules
from transforms.rules import resources
from transforms.sinks import bigquery as bigquery_sink

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / 'templates'
METADATA = json.loads((TEMPLATES / 'metadata.json').read_text())
PARAMETERS = {p['name']: p for p in METADATA['parameters']}
DOCKERFILE = (TEMPLATES / 'Dockerfile').read_text()
WORKDIR = '/template'
# ParameterMetadata.paramType values of the Dataflow API (v1b3).
PARAM_TYPES = {'DEFAULT', 'TEXT', 'GCS_READ_BUCKET', 'GCS_WRITE_BUCKET', 'GCS_READ_FILE',
               'GCS_WRITE_FILE', 'GCS_READ_FOLDER', 'GCS_WRITE_FOLDER', 'PUBSUB_TOPIC',
               'PUBSUB_SUBSCRIPTION', 'BIGQUERY_TABLE', 'JAVASCRIPT_UDF_FILE', 'SERVICE_ACCOUNT',
               'MACHINE_TYPE', 'KMS_KEY_NAME', 'WORKER_REGION', 'WORKER_ZONE', 'BOOLEAN', 'ENUM',
               'NUMBER', 'KAFKA_TOPIC', 'KAFKA_READ_TOPIC', 'KAFKA_WRITE_TOPIC'}
SUBSCRIPTION = 'projects/my-project/subscriptions/events-pipeline'


def job_options() -> dict[str, argparse.Action]:
  """The job's own options (not Beam's), by name, as PersonalizationOptions defines them."""
  parser = argparse.ArgumentParser(add_help=False)
  PersonalizationOptions._add_argparse_args(parser)
  return {action.dest: action for action in parser._actions}


# --- metadata.json and the job's options ---------------------------------------------------------

def test_metadata_lists_every_option_of_the_job_and_nothing_else():
  assert len(METADATA['parameters']) == len(PARAMETERS), 'a parameter is listed twice'
  assert set(PARAMETERS) == set(job_options())


def test_every_parameter_is_described():
  # gcloud's own check (name, label, helpText), plus what this template promises for each.
  assert METADATA['name'] and METADATA['description']
  for name, p in PARAMETERS.items():
    assert p['label'].strip() and p['helpText'].strip(), name
    assert isinstance(p['isOptional'], bool), name
    assert p['paramType'] in PARAM_TYPES, name
    assert p['regexes'], f'{name} has no validating regex'
    for regex in p['regexes']:
      # Anchored, so that an engine that searches instead of matching cannot accept a part.
      assert regex.startswith('^') and regex.endswith('$'), (name, regex)
      re.compile(regex)


def test_the_template_requires_exactly_what_the_streaming_job_requires():
  with pytest.raises(run_module.UsageError, match='--subscription is required'):
    run_module.resolve_options(['--streaming', '--project=my-project'])
  # With a subscription nothing else is needed (no --events: files are optional in streaming).
  run_module.resolve_options(['--streaming', '--project=my-project', f'--subscription={SUBSCRIPTION}'])
  assert {n for n, p in PARAMETERS.items() if not p['isOptional']} == {'subscription'}


def test_on_off_options_are_boolean_parameters():
  flags = {n for n, a in job_options().items() if a.nargs == 0 and a.const is True}
  assert flags == {n for n, p in PARAMETERS.items() if p['paramType'] == 'BOOLEAN'}
  assert flags <= template_main.flag_options()


def test_the_template_is_the_streaming_job():
  # gcloud (528) drops the metadata's `streaming` field from the spec it writes, so the entry
  # point adds --streaming itself; both say the same thing.
  assert METADATA['streaming'] is True
  assert '--streaming' in template_main.flex_template_args([f'--subscription={SUBSCRIPTION}'])


# Good and bad values per parameter: each good one must match its regex and be accepted by the
# job, each bad one must not match.
POSITIVE = (['24', '0.5', '48.25', '.5', '100'], ['0', '0.0', '.0', '-1', '1e3', 'abc', '', '24h'])
NON_NEGATIVE = (['0', '24', '1.5', '.25'], ['-1', '-0.5', 'abc', '', '1,5'])
COLLECTION = (['customers', 'customers_v2', 'product-popularity'],
              ['customers/doc', '.', '..', '__reserved__', 'has space', ''])
GCS_FILE = (['gs://my-bucket/crm/customers.csv', 'gs://my-bucket/crm/*.ndjson'],
            ['data/sample/customers.csv', 'gs://my-bucket', 'gs://my-bucket/', 'gs://b/a b.csv',
             's3://my-bucket/customers.csv', ''])
EXAMPLES = {
    'subscription': ([SUBSCRIPTION, 'projects/example.com:my-project/subscriptions/s_1'],
                     ['events-pipeline', 'projects/my-project/topics/events',
                      'projects/my-project/subscriptions/', 'projects/p/subscriptions/a/b',
                      ' projects/p/subscriptions/s', 'projects//subscriptions/s', '']),
    'events': (['gs://my-bucket/events/*.ndjson.gz',
                'gs://my-bucket/events/*.ndjson.gz,gs://my-bucket/backfill/part-*.avro',
                'gs://my-bucket/2026/11/[0-9]*.json'],
               ['data/sample/events-*.ndjson.gz', 'gs://bucket-only', 'gs://b/x,',
                'gs://b/a, gs://b/c', 's3://b/e.json', '']),
    'customers': GCS_FILE,
    'catalog': GCS_FILE,
    'pubsub_id_attribute': (['messageId', 'x-event-id'], ['', 'googId', 'has space', 'a' * 257]),
    'dataset': (['personalization', 'Analytics_2026'],
                ['my-project:personalization', 'my-project.personalization', 'has-dash', '']),
    'bigquery_write_method': (['STREAMING_INSERTS'],
                              ['FILE_LOADS', 'STORAGE_WRITE_API', 'streaming_inserts', '']),
    'bigquery_location': (['EU', 'US', 'europe-west1', 'us-central1', 'northamerica-northeast1'],
                          ['Europe', 'europe west1', 'europe-west', '']),
    'bigquery_kms_key': (['projects/my-project/locations/europe/keyRings/warehouse/cryptoKeys/bq',
                          'projects/example.com:kms-1/locations/europe-west1/keyRings/r_1/'
                          'cryptoKeys/k-2'],
                         ['projects/p/locations/eu/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1',
                          'projects/p/locations/eu/keyRings/r', 'bq-key',
                          'projects/p/locations/EU/keyRings/r/cryptoKeys/k',
                          ' projects/p/locations/eu/keyRings/r/cryptoKeys/k', '']),
    'skip_table_setup': (['true', 'false'], ['yes', 'True', '1', '']),
    'collection': COLLECTION,
    'popularity_collection': COLLECTION,
    'firestore_database': (['(default)', 'personalization', 'eu-serving-1'],
                           ['my_db', 'Personalization', 'ab', '-db', 'db-', '']),
    'triggers_topic': (['projects/my-project/topics/cart-triggers'],
                       ['cart-triggers', 'projects/my-project/subscriptions/s',
                        'projects/my-project/topics/', '']),
    'audience_topic': (['projects/my-project/topics/audience-changes'],
                       ['audience-changes', 'projects/my-project/subscriptions/s', '']),
    'profile_changes_topic': (['projects/my-project/topics/profile-changes'],
                              ['profile-changes', 'projects/my-project/subscriptions/s', '']),
    'redis_url': (['redis://10.0.0.3:6379/0', 'rediss://redis.internal:6380/1'],
                  ['10.0.0.3:6379', 'http://redis:6379', 'redis://', '']),
    'redis_key_prefix': (['personalization:customers:', 'eu:c:'], ['with space', '']),
    'dedupe_hours': POSITIVE,
    'identity_buffer_hours': POSITIVE,
    'side_input_refresh_minutes': POSITIVE,
    'popularity_window_hours': POSITIVE,
    'cart_abandon_minutes': POSITIVE,
    'allowed_lateness_hours': NON_NEGATIVE,
    'document_flush_seconds': NON_NEGATIVE,
    'firestore_retry_seconds': POSITIVE,
    'restart_dedupe_hours': NON_NEGATIVE,
    'vip_lifetime_value': NON_NEGATIVE,
    'audiences': (['gs://my-bucket/audiences.yaml'], ['audiences.yaml', 'gs://', '']),
    'holdout_percent': (['0', '10', '2.5', '0.01', '50', '50.00'],
                        ['51', '100', '-1', '10.001', 'ten', '']),
    'holdout_salt': (['global-control', 'spring 2027'], ['']),
    'max_message_bytes': (['32768', '1'], ['0', '1.5', '-1', '32k', '']),
    'batch_shards': (['256', '1', '4096'], ['0', '2.5', '-8', 'many', '']),
    'as_of': (['2026-11-15T00:00:00Z', '2026-11-15T08:30:00+01:00', '2026-11-15',
               '2026-11-15T08:30:00.123456Z'],
              ['15/11/2026', '2026-11-15T8:30Z', 'yesterday', '']),
}


def test_every_parameter_has_examples():
  assert set(EXAMPLES) == set(PARAMETERS)


def _matches(name: str, value: str) -> bool:
  return all(re.fullmatch(regex, value) for regex in PARAMETERS[name]['regexes'])


def _job_accepts(name: str, value: str):
  """The value as the job parses it, given the way the launcher passes it (`--name=value`)."""
  opts = PipelineOptions(template_main.flex_template_args([f'--{name}={value}']))
  return getattr(opts.view_as(PersonalizationOptions), name)


@pytest.mark.parametrize('name', sorted(EXAMPLES))
def test_parameter_regexes_accept_good_values_and_reject_bad_ones(name):
  good, bad = EXAMPLES[name]
  for value in good:
    assert _matches(name, value), (name, value)
    parsed = _job_accepts(name, value)
    if EXAMPLES[name] is POSITIVE:
      assert parsed > 0  # what resolve_options checks
  for value in bad:
    assert not _matches(name, value), (name, value)


def test_good_values_pass_the_jobs_own_checks():
  for value in EXAMPLES['subscription'][0]:
    assert resources.pubsub_path_problem(value, 'subscription') is None
  for value in EXAMPLES['triggers_topic'][0]:
    assert resources.pubsub_path_problem(value, 'topic') is None
  for value in EXAMPLES['as_of'][0]:
    assert event_rules.parse_time(value) is not None
  good, bad = EXAMPLES['bigquery_kms_key']
  assert [resources.kms_key_problem(value) for value in good] == [None] * len(good)
  assert all(resources.kms_key_problem(value) for value in bad)
  assert _job_accepts('skip_table_setup', 'true') is True
  assert _job_accepts('skip_table_setup', 'false') is False


def _streaming_graph_error(method: str) -> str | None:
  """Builds (and translates, as a runner does) the template's graph with a good value for every
  parameter; returns why it failed, or None. Construction only: nothing runs, nothing is
  contacted. The local streaming runner stands in for DataflowRunner, whose option checks would
  look for the buckets."""
  # --audiences is read (from GCS) while the graph is built, which this test must not reach:
  # reading and checking the file is tested in test_audience_definitions.py.
  values = {name: good[0] for name, (good, _) in EXAMPLES.items() if name != 'audiences'}
  values['bigquery_write_method'] = method
  args = [f'--{name}={value}' for name, value in values.items()]
  args += ['--runner=BundleBasedDirectRunner', '--project=my-project',
           '--temp_location=gs://my-bucket/tmp']
  options = PipelineOptions(template_main.flex_template_args(args))
  p = beam.Pipeline(options=options)
  logging.disable(logging.WARNING)
  try:
    graph.build(p, options.view_as(PersonalizationOptions), 'my-project')
    p.to_runner_api()
  except (ValueError, RuntimeError) as err:
    return f'{type(err).__name__}: {err}'
  finally:
    logging.disable(logging.NOTSET)
  return None


@pytest.mark.parametrize('method', bigquery_sink.WRITE_METHODS)
def test_the_template_allows_exactly_the_write_methods_its_graph_builds_with(method):
  # Today only STREAMING_INSERTS: FILE_LOADS has no triggering frequency for an unbounded input,
  # and STORAGE_WRITE_API cannot map the tables' JSON columns (Beam 2.77). When one of them starts
  # to build, this fails until metadata.json allows it.
  error = _streaming_graph_error(method)
  assert (error is None) == _matches('bigquery_write_method', method), error


def test_flex_template_args():
  args = template_main.flex_template_args([f'--subscription={SUBSCRIPTION}',
                                           '--skip_table_setup=true'])
  assert args == [f'--subscription={SUBSCRIPTION}', '--skip_table_setup', '--streaming',
                  '--runner=DataflowRunner']
  args = template_main.flex_template_args(['--skip_table_setup=false', '--runner=X', '--streaming'])
  assert args == ['--runner=X', '--streaming']
  # A value that is neither true nor false is left for the job's parser to reject.
  assert '--skip_table_setup=maybe' in template_main.flex_template_args(['--skip_table_setup=maybe'])


def test_the_entry_point_reports_bad_options_as_a_usage_error(capsys):
  assert template_main.main(['--project=my-project']) == 2
  assert '--subscription is required' in capsys.readouterr().err


# --- Dockerfile -----------------------------------------------------------------------------------

def _docker_lines() -> list[str]:
  joined = re.sub(r'\\\n', ' ', DOCKERFILE)
  return [line.strip() for line in joined.splitlines()
          if line.strip() and not line.lstrip().startswith('#')]


def _copies() -> dict[str, str]:
  """Repository path -> image path of every COPY from the build context."""
  copies = {}
  for line in _docker_lines():
    words = line.split()
    if words[0] == 'COPY' and not any(w.startswith('--from') for w in words):
      assert len(words) == 3, f'one source per COPY, please: {line}'
      copies[words[1]] = words[2]
  return copies


def _image_to_repo(image_path: str) -> pathlib.Path:
  for source, target in _copies().items():
    if image_path == target or image_path.startswith(target.rstrip('/') + '/'):
      return ROOT / source / os.path.relpath(image_path, target)
  raise AssertionError(f'{image_path} is not copied into the image')


def test_dockerfile_pins_the_beam_version_of_requirements_txt():
  pin = re.search(r'^apache-beam\[gcp\]==(\S+)$', (ROOT / 'requirements.txt').read_text(), re.M)
  froms = [line.split()[1] for line in _docker_lines() if line.startswith('FROM ')]
  sdk = [f for f in froms if f.startswith('apache/beam_python')]
  assert sdk == [f'apache/beam_python3.11_sdk:{pin.group(1)}']


def test_dockerfile_python_version_matches_setup_py_and_the_launcher():
  assert "python_requires='>=3.11,<3.12'" in (ROOT / 'setup.py').read_text()
  assert 'dataflow-templates-base/python311-template-launcher-base:' in DOCKERFILE
  assert 'apache/beam_python3.11_sdk:' in DOCKERFILE


def test_dockerfile_is_launcher_and_sdk_container():
  lines = _docker_lines()
  launcher = '/opt/google/dataflow/python_template_launcher'
  assert any(l.startswith('COPY --from=launcher') and l.count(launcher) == 2 for l in lines)
  assert lines[-1] == 'ENTRYPOINT ["/opt/apache/beam/boot"]'
  assert 'RUN pip check' in lines


def test_dockerfile_launcher_variables_point_at_files_of_the_repository():
  env = dict(re.findall(r'^ENV (FLEX_TEMPLATE_PYTHON_\w+)=(\S+)$', DOCKERFILE, re.M))
  assert set(env) == {'FLEX_TEMPLATE_PYTHON_PY_FILE', 'FLEX_TEMPLATE_PYTHON_SETUP_FILE'}
  assert _image_to_repo(env['FLEX_TEMPLATE_PYTHON_PY_FILE']) == TEMPLATES / 'main.py'
  assert _image_to_repo(env['FLEX_TEMPLATE_PYTHON_SETUP_FILE']) == ROOT / 'setup.py'


def test_dockerfile_copies_every_package_and_file_setup_py_needs():
  copies = _copies()
  for source in copies:
    assert (ROOT / source).exists(), source
  packages = {name.split('.')[0] for name in setuptools.find_packages(
      str(ROOT), include=['pipeline', 'transforms', 'schemas', 'connector', 'collector'])}
  assert packages <= set(copies)
  # setup.py reads requirements.txt, connector/requirements.txt and collector/requirements.txt
  # (inside `connector` and `collector`).
  assert {'setup.py', 'MANIFEST.in', 'requirements.txt'} <= set(copies)


def test_dockerignore_keeps_local_state_out_of_the_build_context():
  ignored = set((ROOT / '.dockerignore').read_text().split())
  assert {'.git', '.venv', '.venv-bq', '.localstack', 'data', 'bench/results'} <= ignored


# --- build.sh and run.sh (dry runs) ---------------------------------------------------------------

BASE_ENV = {'PROJECT': 'my-project', 'REGION': 'europe-west1', 'REPOSITORY': 'pipelines',
            'BUCKET': 'my-bucket', 'TAG': 'v7'}
IMAGE = 'europe-west1-docker.pkg.dev/my-project/pipelines/email-personalization:v7'
TEMPLATE = 'gs://my-bucket/templates/email-personalization-v7.json'


def _script(name: str, env: dict, *args: str) -> subprocess.CompletedProcess:
  clean = {'PATH': os.environ['PATH'], 'HOME': os.environ.get('HOME', '/tmp'), **env}
  return subprocess.run(['bash', str(TEMPLATES / name), *args], env=clean, cwd=ROOT,
                        capture_output=True, text=True, timeout=60)


def test_build_dry_run_builds_the_image_and_the_template_with_the_metadata():
  result = _script('build.sh', BASE_ENV, '--dry-run')
  assert result.returncode == 0, result.stderr
  build, template = result.stdout.splitlines()
  assert build.startswith('gcloud builds submit . ') and '--config templates/cloudbuild.yaml' in build
  assert f'_IMAGE={IMAGE}' in build
  assert template.startswith(f'gcloud dataflow flex-template build {TEMPLATE} ')
  for part in (f'--image {IMAGE}', '--sdk-language PYTHON', '--metadata-file templates/metadata.json',
               '--project my-project'):
    assert part in template
  assert (ROOT / 'templates/cloudbuild.yaml').exists()


def test_build_dry_run_with_local_docker():
  result = _script('build.sh', {**BASE_ENV, 'BUILDER': 'docker', 'DRY_RUN': '1'})
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[:2] == [
      f'docker build -f templates/Dockerfile -t {IMAGE} .', f'docker push {IMAGE}']


def test_run_dry_run_launches_the_template_with_the_image_and_the_parameters():
  env = {**BASE_ENV, 'SUBSCRIPTION': SUBSCRIPTION, 'DEDUPE_HOURS': '48',
         'EVENTS': 'gs://my-bucket/e/*.ndjson.gz,gs://my-bucket/b/*.avro',
         'TRIGGERS_TOPIC': 'projects/my-project/topics/cart-triggers',
         'SERVICE_ACCOUNT': 'pipeline@my-project.iam.gserviceaccount.com'}
  result = _script('run.sh', env, '--dry-run')
  assert result.returncode == 0, result.stderr
  [command] = result.stdout.splitlines()
  assert command.startswith('gcloud dataflow flex-template run email-personalization ')
  for part in (f'--template-file-gcs-location {TEMPLATE}', '--region europe-west1',
               f'--parameters sdk_container_image={IMAGE}', '--enable-streaming-engine',
               f'--parameters subscription={SUBSCRIPTION}', '--parameters dedupe_hours=48',
               '--parameters triggers_topic=projects/my-project/topics/cart-triggers',
               # gcloud splits values on commas: this one uses its ^DELIM^ escape.
               "'^~^events=gs://my-bucket/e/*.ndjson.gz,gs://my-bucket/b/*.avro'",
               '--additional-pipeline-options autoscaling_algorithm=THROUGHPUT_BASED',
               '--staging-location gs://my-bucket/staging', '--temp-location gs://my-bucket/tmp',
               '--service-account-email pipeline@my-project.iam.gserviceaccount.com'):
    assert part in command
  assert '--update' not in command


def test_run_dry_run_updates_in_place():
  env = {**BASE_ENV, 'SUBSCRIPTION': SUBSCRIPTION, 'UPDATE': '1',
         'TRANSFORM_NAME_MAPPINGS': 'OldStep=NewStep'}
  result = _script('run.sh', env, '--dry-run')
  assert result.returncode == 0, result.stderr
  assert result.stdout.rstrip().endswith('--update --transform-name-mappings OldStep=NewStep')
  env.pop('UPDATE')
  result = _script('run.sh', env, '--dry-run')
  assert result.returncode != 0 and 'set UPDATE=1' in result.stderr


def test_run_dry_run_protects_the_job_with_the_dataflow_kms_key():
  key = 'projects/my-project/locations/europe-west1/keyRings/personalization/cryptoKeys/dataflow'
  env = {**BASE_ENV, 'SUBSCRIPTION': SUBSCRIPTION, 'DATAFLOW_KMS_KEY': key,
         'BIGQUERY_KMS_KEY': key.replace('europe-west1', 'europe').replace('dataflow', 'bq')}
  result = _script('run.sh', env, '--dry-run')
  assert result.returncode == 0, result.stderr
  [command] = result.stdout.splitlines()
  # Beam's --dataflow_kms_key is no parameter of the template: gcloud sets the job's key.
  assert f'--dataflow-kms-key {key}' in command
  assert f'--parameters bigquery_kms_key={env["BIGQUERY_KMS_KEY"]}' in command
  assert '--dataflow-kms-key' not in _script('run.sh', {**BASE_ENV, 'SUBSCRIPTION': SUBSCRIPTION},
                                             '--dry-run').stdout
  result = _script('run.sh', {**env, 'DATAFLOW_KMS_KEY': 'dataflow-key'}, '--dry-run')
  assert result.returncode != 0 and 'DATAFLOW_KMS_KEY must be' in result.stderr


@pytest.mark.parametrize('script, missing', [
    ('build.sh', 'PROJECT'), ('build.sh', 'REGION'), ('build.sh', 'REPOSITORY'),
    ('build.sh', 'BUCKET'), ('run.sh', 'SUBSCRIPTION'), ('run.sh', 'BUCKET'),
    ('run.sh', 'PROJECT')])
def test_a_missing_variable_is_named_and_fails(script, missing):
  env = {**BASE_ENV, 'SUBSCRIPTION': SUBSCRIPTION}
  env.pop(missing)
  result = _script(script, env, '--dry-run')
  assert result.returncode != 0
  assert f'{missing}: set {missing} to' in result.stderr
  assert result.stdout == ''


def test_scripts_reject_a_bucket_url_and_unknown_arguments():
  result = _script('run.sh', {**BASE_ENV, 'SUBSCRIPTION': SUBSCRIPTION, 'BUCKET': 'gs://my-bucket'},
                   '--dry-run')
  assert result.returncode != 0 and 'without gs://' in result.stderr
  result = _script('build.sh', BASE_ENV, '--dryrun')
  assert result.returncode != 0 and "unknown argument '--dryrun'" in result.stderr


# --- the package, as the image installs it ----------------------------------------------------------

def _wheel_build_args() -> list[str]:
  """Build offline when this environment can (setuptools >= 70.1 or the wheel package);
  otherwise pip fetches setuptools and wheel into an isolated build environment."""
  major, minor = (int(x) for x in setuptools.__version__.split('.')[:2])
  if (major, minor) >= (70, 1) or importlib.util.find_spec('wheel'):
    return ['--no-build-isolation']
  return []


def test_the_wheel_installs_into_a_fresh_venv_and_runs_from_anywhere(tmp_path):
  """Builds the wheel from exactly the files the Dockerfile copies (so a file the image lacks
  fails here too), installs it with --no-deps into a new virtual environment and runs the job's
  --help there from a directory outside the repository, so nothing is imported from the checkout.

  The dependencies are not installed again (that takes minutes and needs the network): a .pth
  file in the new environment adds this environment's site-packages after its own, so Beam and
  the Google clients come from here while `pipeline`, `transforms` and `schemas` can only come
  from the wheel. Checking the pins themselves is the image build's `pip check`."""
  source = tmp_path / 'context'
  for repo_path, image_path in _copies().items():
    target = source / os.path.relpath(image_path, WORKDIR)
    if (ROOT / repo_path).is_dir():
      shutil.copytree(ROOT / repo_path, target,
                      ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
    else:
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(ROOT / repo_path, target)
  wheels = tmp_path / 'wheels'
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--quiet',
                  *_wheel_build_args(), '-w', str(wheels), str(source)],
                 check=True, capture_output=True, text=True, timeout=110)
  [wheel] = wheels.glob('*.whl')
  names = set(zipfile.ZipFile(wheel).namelist())
  schema_files = {f'schemas/{p.name}' for p in (ROOT / 'schemas').iterdir()
                  if p.suffix in ('.json', '.avsc')}
  assert schema_files and schema_files <= names
  assert {'pipeline/run.py', 'pipeline/options.py', 'transforms/sources.py'} <= names

  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True,
                 timeout=60)
  python = venv / 'bin' / 'python'
  subprocess.run([sys.executable, '-m', 'pip', '--python', str(python), 'install', '--no-deps',
                  '--no-index', '--quiet', str(wheel)], check=True, capture_output=True,
                 timeout=60)
  site_packages = pathlib.Path(subprocess.run(
      [str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
      check=True, capture_output=True, text=True).stdout.strip())
  ours = {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']}
  (site_packages / 'project_dependencies.pth').write_text(
      ''.join(f'import site; site.addsitedir({path!r})\n' for path in sorted(ours)))

  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  where = subprocess.run(
      [str(python), '-c', 'import pipeline.run, schemas; print(pipeline.run.__file__);'
       'print(len(schemas.TABLES))'],
      cwd=elsewhere, env=env, check=True, capture_output=True, text=True, timeout=60)
  assert where.stdout.startswith(str(site_packages)), where.stdout
  for command in ([str(python), '-m', 'pipeline.run', '--help'],
                  # The flex template's entry point, run as the launcher runs it: as a script.
                  [str(python), str(source / 'templates' / 'main.py'), '--help']):
    result = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    for option in ('--subscription', '--events', '--bigquery_write_method', '--dataset'):
      assert option in result.stdout
