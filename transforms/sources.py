"""Reading inputs: event files and reference files (CRM export, product catalog)."""
from __future__ import annotations

import time
import typing
from typing import Callable

import apache_beam as beam
from apache_beam import coders
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes

from transforms import metrics
from transforms.rules import dead_letters, events, reference, source_tags
from transforms.rules.dead_letters import Rejection
from transforms.rules.source_tags import file_source
from transforms.settings import PubSubSource

PUBSUB_SOURCE = source_tags.PUBSUB


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


def _read_whole(pbegin, i: int, pattern: str):
  """NDJSON files matched and read whole, one file per element, in 1 MiB blocks."""
  return (pbegin
          | f'Match[{i}]' >> fileio.MatchFiles(pattern)
          | f'ReadMatches[{i}]' >> fileio.ReadMatches()
          | f'ReadLines[{i}]' >> beam.ParDo(_ReadLinesFn()))


def _read_avro(pbegin, i: int, pattern: str):
  """Avro files of `schemas/segment_event.avsc` (Beam's fastavro-backed reader), as JSON."""
  return (pbegin
          | f'Pattern[{i}]' >> beam.Create([pattern])
          | f'ReadAvro[{i}]' >> beam.io.ReadAllFromAvro(with_filename=True)
          | f'AvroToJson[{i}]' >> beam.Map(_avro_to_payload))


def _read_splittable(pbegin, i: int, pattern: str):
  """Uncompressed NDJSON by ReadFromText, whose splittable reader divides a large file between
  workers."""
  return (pbegin
          | f'Read[{i}]' >> beam.io.ReadFromTextWithFilename(
              pattern, coder=coders.BytesCoder(), strip_trailing_newlines=True)
          | f'TagSource[{i}]' >> beam.ParDo(_TagLines()))


def _flatten(reads):
  if len(reads) == 1:
    return reads[0]
  return reads | 'FlattenFiles' >> beam.Flatten()


def _check_patterns(patterns) -> list[str]:
  if not patterns:
    raise ValueError('ReadEventFiles needs at least one file pattern')
  return list(patterns)


@beam.typehints.with_output_types(tuple[str, bytes, None])
class ReadEventFiles(beam.PTransform):
  """Reads event files in a bounded job: newline-delimited JSON (`.gz` decompressed by
  extension) or Avro.

  Takes file patterns (globs, local or `gs://`); a pattern ending in `.avro` is read as Avro
  files of `schemas/segment_event.avsc` (Beam's fastavro-backed reader), any other as NDJSON.
  Produces `(source, payload, attributes)` triples: `source` is `file:<path>`, `payload` the raw
  line as bytes (not decoded here, so invalid UTF-8 reaches the parser and is dead-lettered with
  its original bytes) or an Avro record re-encoded as JSON, `attributes` None.

  Uncompressed NDJSON is read by ReadFromText (its splittable reader divides a large file between
  workers). Compressed files (`.gz`, `.bz2`, `.zst`, ...: a pattern ending in a compression
  extension) cannot be split by any reader, so they are read whole, as `ReadWholeEventFiles`
  does, which costs less per line than ReadFromText's per-record reader on the FnApiRunner and
  saves the source-tagging step (docs/PERFORMANCE.md, "Fewer steps over every event").
  """

  def __init__(self, patterns: typing.Sequence[str]):
    super().__init__()
    self._patterns = _check_patterns(patterns)

  def expand(self, pbegin):
    return _flatten([_read_avro(pbegin, i, pattern) if is_avro_pattern(pattern)
                     else _read_whole(pbegin, i, pattern) if is_compressed_pattern(pattern)
                     else _read_splittable(pbegin, i, pattern)
                     for i, pattern in enumerate(self._patterns)])


@beam.typehints.with_output_types(tuple[str, bytes, None])
class ReadWholeEventFiles(beam.PTransform):
  """Reads event files as `ReadEventFiles` does, each NDJSON file whole, in one DoFn: what a
  streaming job can run (files merged into a Pub/Sub stream, such as a backfill), since
  ReadFromText's splittable reader cannot run in a streaming pipeline on the DirectRunner.
  Same patterns, same `(source, payload, attributes)` triples."""

  def __init__(self, patterns: typing.Sequence[str]):
    super().__init__()
    self._patterns = _check_patterns(patterns)

  def expand(self, pbegin):
    return _flatten([_read_avro(pbegin, i, pattern) if is_avro_pattern(pattern)
                     else _read_whole(pbegin, i, pattern)
                     for i, pattern in enumerate(self._patterns)])


class _ToTripleFn(beam.DoFn):
  """PubsubMessage -> (source, payload, attributes): source `pubsub:<name>` from a valid `source`
  attribute, else `pubsub` (transforms.rules.source_tags); a message whose `source` attribute is
  not a valid name keeps its place and is counted (`pubsub_source_attribute_invalid`)."""

  def __init__(self):
    self._bad_source = metrics.counter(metrics.PUBSUB_SOURCE_INVALID)

  def process(self, message):
    attributes = dict(message.attributes or {})
    if source_tags.has_bad_source(attributes):
      self._bad_source.inc()
    yield source_tags.pubsub_source(attributes), message.data, attributes


@beam.typehints.with_output_types(tuple[str, bytes, dict])
class ReadPubSubEvents(beam.PTransform):
  """Reads events from the Pub/Sub subscription of `source`, with attributes.

  Produces `(source, payload, attributes)` triples with source `pubsub:<name>` when the message
  has a valid `source` attribute (the collector's, from the write key), else `pubsub`. The
  element timestamp is the publish time here; the event time is taken from the payload after
  parsing.
  `source.id_attribute` turns on Pub/Sub's own dedupe by an attribute (Dataflow only; the
  DirectRunner does not support it, and the graph dedupes by messageId in any case).
  """

  def __init__(self, source: PubSubSource):
    super().__init__()
    self._subscription = source.subscription
    self._id_attribute = source.id_attribute or None

  def expand(self, pbegin):
    return (pbegin
            | 'ReadPubSub' >> beam.io.ReadFromPubSub(subscription=self._subscription,
                                                     with_attributes=True,
                                                     id_label=self._id_attribute)
            | 'ToTriple' >> beam.ParDo(_ToTripleFn()))


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
