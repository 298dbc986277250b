"""BigQuery clients that honour BIGQUERY_EMULATOR_HOST, like Google's clients honour
PUBSUB_EMULATOR_HOST and FIRESTORE_EMULATOR_HOST.

When the variable is unset these return None / the default client and production behaviour is
Beam's and Google's own. When it is set (`http://127.0.0.1:9050`), every table call, load job and
streaming insert goes to that endpoint with anonymous credentials.

Why a client class of our own: Beam's WriteToBigQuery builds an apitools client with a fixed
googleapis.com endpoint and no emulator switch; its public `test_client` argument is the only way
in. Beam uses that one object both as the apitools client (tables, jobs) and as the
google-cloud-bigquery client (`insert_rows_json` for streaming inserts), so the class below is an
apitools `BigqueryV2` bound to the emulator URL that delegates `insert_rows_json` to a
google-cloud-bigquery client bound to the same URL. It pickles as (endpoint, project) only, since
Beam ships it to workers inside the DoFn.
"""
from __future__ import annotations

import os
import time

from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

EMULATOR_ENV = 'BIGQUERY_EMULATOR_HOST'


def emulator_endpoint() -> str | None:
  """`http://host:port` of the BigQuery emulator, or None for real BigQuery."""
  host = os.environ.get(EMULATOR_ENV, '').strip().rstrip('/')
  if not host:
    return None
  return host if '://' in host else f'http://{host}'


def cloud_client(project: str) -> bigquery.Client:
  """A google-cloud-bigquery client for `project`, bound to the emulator when one is set."""
  endpoint = emulator_endpoint()
  if endpoint is None:
    return bigquery.Client(project=project)
  return bigquery.Client(project=project,
                         credentials=AnonymousCredentials(),
                         client_options=ClientOptions(api_endpoint=endpoint))


class EmulatorBigqueryClient(bigquery_v2_client.BigqueryV2):
  """The `test_client` Beam's BigQuery sinks take, pointed at a BigQuery emulator."""

  def __init__(self, endpoint: str, project: str):
    super().__init__(url=endpoint + '/bigquery/v2/',
                     get_credentials=False,
                     credentials=None,
                     response_encoding='utf8')
    self._endpoint = endpoint
    self._project = project
    self._cloud = None

  def __reduce__(self):
    return (type(self), (self._endpoint, self._project))

  def test_clock(self) -> float:
    # Beam's file-loads path reads `test_clock` from a test client (auto-sharding in streaming).
    return time.time()

  def insert_rows_json(self, table, json_rows, **kwargs):
    if self._cloud is None:
      self._cloud = bigquery.Client(project=self._project,
                                    credentials=AnonymousCredentials(),
                                    client_options=ClientOptions(api_endpoint=self._endpoint))
    return self._cloud.insert_rows_json(table, json_rows, **kwargs)


def beam_test_client(project: str) -> EmulatorBigqueryClient | None:
  """The client to hand to WriteToBigQuery(test_client=...): None outside the emulator."""
  endpoint = emulator_endpoint()
  return None if endpoint is None else EmulatorBigqueryClient(endpoint, project)
