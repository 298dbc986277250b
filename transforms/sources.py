"""Reading inputs: event files and reference files (CRM export, product catalog)."""
from __future__ import annotations

import time
from typing import Callable

import apache_beam as beam
from apache_beam import coders
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes

from transforms import metrics
from transforms.rules import dead_letters, events, reference, resources
from transforms.rules.dead_letters import Rejection


def file_source(path: str) -> str:
  """The `source` tag of a record read from a file."""
  return f'file:{path}'


PUBSUB_SOURCE = 'pubsub'


class _TagLines(beam.DoFn):
  """(filename, line bytes) -> (source, line bytes, None); blank lines are not records."""

  def __init__(self):
    self._blank = metrics.counter(metrics.BLANK_LINES)

  def process(self, element):
    filename, line = element
    if line.strip():
      yield file_source(filename), line, None
    else:
      self._blank.inc()


class _ReadLinesFn(beam.DoFn):
  """ReadableFile -> (source, line bytes, None) per non-blank line, streamed from the file."""

  def __init__(self):
    self._blank = metrics.counter(metrics.BLANK_LINES)

  def process(self, readable_file):
    source = file_source(readable_file.metadata.path)
    blank = 0
    with readable_file.open() as handle:
      for line in _lines(handle):
        if line.strip():
          yield source, line, None
        else:
          blank += 1
    self._blank.inc(blank)


def _lines(handle, block_bytes: int = 1 << 20):
  """The lines of a binary file object, without their line ends, read in 1 MiB blocks.

  Hand-written rather than `readline()`: Beam's CompressedFile implements readline in Python
  (and is not iterable), which cost more per line than splitting blocks here.
  """
  rest = b''
  while True:
    block = handle.read(block_bytes)
    if not block:
      break
    lines = (rest + block).split(b'\n')
    rest = lines.pop()
    for line in lines:
      yield line.rstrip(b'\r')
  if rest:
    yield rest.rstrip(b'\r')


def _avro_to_payload(element):
  filename, record = element
  return file_source(filename), events.avro_record_to_json(record), None


def is_avro_pattern(pattern: str) -> bool:
  return pattern.endswith('.avro')


def is_compressed_pattern(pattern: str) -> bool:
  """Whether files of `pattern` are compressed (by extension, as Beam decides when reading)."""
  return CompressionTypes.detect_compression_type(pattern) != CompressionTypes.UNCOMPRESSED


@beam.typehints.with_output_types(tuple[str, bytes, None])
class ReadEventFiles(beam.PTransform):
  """Reads event files: newline-delimited JSON (`.gz` decompressed by extension) or Avro.

  Takes a list of file patterns (globs, local or `gs://`); a pattern ending in `.avro` is read as
  Avro files of `schemas/segment_event.avsc` (Beam's fastavro-backed reader), any other as NDJSON.
  Produces `(source, payload, attributes)` triples: `source` is `file:<path>`, `payload` the raw
  line as bytes (not decoded here, so invalid UTF-8 reaches the parser and is dead-lettered with
  its original bytes) or an Avro record re-encoded as JSON, `attributes` None.

  NDJSON files are read by ReadFromText in batch when uncompressed (its splittable reader divides
  a large file between workers). Compressed files (`.gz`, `.bz2`, `.zst`, ...: a pattern ending in
  a compression extension) cannot be split by any reader, so they are matched and read whole,
  one file per element, in a plain DoFn that splits 1 MiB blocks into lines: about 10 us less per
  line than ReadFromText's per-record reader on the FnApiRunner, and one step (the source tag)
  less. With `streaming=True` (files merged into a Pub/Sub stream) every NDJSON file is read that
  way: ReadFromText's splittable reader cannot run in a streaming pipeline on the DirectRunner.
  """

  def __init__(self, patterns: list[str], streaming: bool = False):
    super().__init__()
    if not patterns:
      raise ValueError('ReadEventFiles needs at least one file pattern')
    self._patterns = list(patterns)
    self._streaming = streaming

  def expand(self, pbegin):
    reads = []
    for i, pattern in enumerate(self._patterns):
      if not is_avro_pattern(pattern) and (self._streaming or is_compressed_pattern(pattern)):
        reads.append(pbegin
                     | f'Match[{i}]' >> fileio.MatchFiles(pattern)
                     | f'ReadMatches[{i}]' >> fileio.ReadMatches()
                     | f'ReadLines[{i}]' >> beam.ParDo(_ReadLinesFn()))
      elif is_avro_pattern(pattern):
        reads.append(pbegin
                     | f'Pattern[{i}]' >> beam.Create([pattern])
                     | f'ReadAvro[{i}]' >> beam.io.ReadAllFromAvro(with_filename=True)
                     | f'AvroToJson[{i}]' >> beam.Map(_avro_to_payload))
      else:
        reads.append(pbegin
                     | f'Read[{i}]' >> beam.io.ReadFromTextWithFilename(
                         pattern, coder=coders.BytesCoder(), strip_trailing_newlines=True)
                     | f'TagSource[{i}]' >> beam.ParDo(_TagLines()))
    if len(reads) == 1:
      return reads[0]
    return reads | 'FlattenFiles' >> beam.Flatten()


def _message_to_triple(message):
  return PUBSUB_SOURCE, message.data, dict(message.attributes or {})


@beam.typehints.with_output_types(tuple[str, bytes, dict])
class ReadPubSubEvents(beam.PTransform):
  """Reads events from a Pub/Sub subscription (`projects/P/subscriptions/S`), with attributes.

  Produces `(source, payload, attributes)` triples with source `pubsub`. The element timestamp is
  the publish time here; the event time is taken from the payload after parsing. `id_attribute`
  turns on Pub/Sub's own dedupe by an attribute (Dataflow only; the DirectRunner does not support
  it, and the graph dedupes by messageId in any case).
  """

  def __init__(self, subscription: str, id_attribute: str | None = None):
    super().__init__()
    problem = resources.pubsub_path_problem(subscription, 'subscription')
    if problem:
      raise ValueError(f'subscription {problem}')
    self._subscription = subscription
    self._id_attribute = id_attribute or None

  def expand(self, pbegin):
    return (pbegin
            | 'ReadPubSub' >> beam.io.ReadFromPubSub(subscription=self._subscription,
                                                     with_attributes=True,
                                                     id_label=self._id_attribute)
            | 'ToTriple' >> beam.Map(_message_to_triple))


class _ParseReferenceFile(beam.DoFn):
  """ReadableFile -> parsed records (main output) and dead letters (tagged `dead_letter`)."""

  def __init__(self, kind: str, parse: Callable, step: str):
    self._kind = kind
    self._parse = parse
    self._step = step
    self._read = metrics.counter(metrics.REFERENCE_READ.format(kind=kind))
    self._valid = metrics.counter(metrics.REFERENCE_VALID.format(kind=kind))
    self._dead = metrics.counter(metrics.REFERENCE_DEAD_LETTERED.format(kind=kind))

  def process(self, readable_file):
    path = readable_file.metadata.path
    source = file_source(path)
    for raw, result in reference.parse_records(path, readable_file.read(), self._parse):
      self._read.inc()
      if isinstance(result, Rejection):
        self._dead.inc()
        metrics.counter(metrics.DEAD_LETTER_BY_TYPE.format(
            failure_type=result.failure_type)).inc()
        yield beam.pvalue.TaggedOutput('dead_letter', dead_letters.dead_letter(
            result.failure_type, result.message, self._step, raw, source,
            time.time_ns() // 1000))
      else:
        self._valid.inc()
        yield result


class ReadReference(beam.PTransform):
  """Reads a reference file (CRM export or product catalog: CSV with a header, or NDJSON).

  `kind` names it in metrics (`customers`, `catalog`); `parse` turns one row's fields (a dict of
  strings or JSON values) into a record or a `Rejection`. Produces a tuple-like result with the
  parsed records as the main output and dead-letter records under the `dead_letter` tag. Files are
  read whole (reference files are small next to events, and CSV rows may hold quoted newlines).
  """

  def __init__(self, kind: str, pattern: str, parse: Callable):
    super().__init__()
    if not pattern:
      raise ValueError(f'ReadReference({kind}) needs a file pattern')
    self._kind = kind
    self._pattern = pattern
    self._parse = parse

  def expand(self, pbegin):
    return (pbegin
            | 'MatchFiles' >> fileio.MatchFiles(self._pattern)
            | 'ReadMatches' >> fileio.ReadMatches()
            | 'ParseRows' >> beam.ParDo(
                _ParseReferenceFile(self._kind, self._parse, f'Read{self._kind.title()}'))
            .with_outputs('dead_letter', main='records'))
