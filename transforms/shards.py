"""Batch shuffles of compressed chunks: records bound for the same shard of keys travel together.

The batch dedupe (by message id) and the batch group by customer shuffle every event. Shuffling
one element per event costs a runner per-element work and memory for every event (the
FnApiRunner holds and copies every shuffled element at a stage boundary; docs/PERFORMANCE.md has
the peaks measured), and the same bytes are what Dataflow Shuffle bills. Here each bundle instead
buffers its records per shard (a stable hash of the key modulo `Sharding.shards`), and emits a
shard's buffer as one zstd-compressed chunk when it reaches `Sharding.chunk_bytes` or the bundle
ends: a GroupByKey on the shard number then brings together every record of a shard, in a few
chunks several times smaller than the records. The consumer reads a shard's lines back with
`records` and finishes the grouping in memory, one shard at a time.

A chunk is the records' lines joined by newlines: lines must not contain a raw newline (the line
formats of transforms/line_formats.py never do). Batch only: chunks emitted when a bundle ends
carry the global window, and a shard's lines are emitted only when its buffer fills, when all of
a buffer's shards together reach `max_buffered`, or when the bundle ends. A buffer holds at most
`min(shards * chunk_bytes, max_buffered)` of uncompressed lines (`MAX_BUFFERED` by default).
"""
from __future__ import annotations

import typing
import zlib

import apache_beam as beam
import zstandard
from apache_beam.transforms.window import GlobalWindows

from transforms.settings import CHUNK_BYTES, DEFAULT_SHARDS, Sharding

__all__ = ['CHUNK_BYTES', 'DEFAULT_SHARDS', 'MAX_BUFFERED', 'ChunkBuffer', 'ChunkByShard',
           'ChunkByShardFn', 'Sharding', 'records', 'shard_of']

# Lines buffered over all shards of one buffer before the buffer just added to is emitted early.
MAX_BUFFERED = 64 * 1024 * 1024


def shard_of(key: str, shards: int) -> int:
  """The shard of a key. CRC-32 rather than `hash()`, which differs between worker processes."""
  return zlib.crc32(key.encode('utf-8', 'surrogatepass')) % shards


class ChunkBuffer:
  """Lines buffered per shard; `add` returns a (shard, compressed chunk) pair when a shard's buffer
  is full, `drain` the rest (at the end of a bundle). For DoFns that chunk what they emit.

  A shard's buffer is emitted when it reaches `chunk_bytes`, or when all buffers together reach
  `max_buffered` (then the buffer just added to is emitted, smaller): memory stays bounded when
  shards are many. Lines are appended to a bytearray per shard rather than kept as a list: each
  bytes object orjson returns keeps its whole output buffer, several times the line's size
  (docs/PERFORMANCE.md, "orjson's output buffers").
  """

  def __init__(self, sharding: Sharding = Sharding(), max_buffered: int = MAX_BUFFERED):
    self._shards = sharding.shards
    self._chunk_bytes = sharding.chunk_bytes
    self._max_buffered = max_buffered
    self._compressor = zstandard.ZstdCompressor(level=1)
    self._buffers: dict[int, bytearray] = {}
    self._buffered = 0

  def add(self, key: str, line: bytes) -> tuple[int, bytes] | None:
    shard = shard_of(key, self._shards)
    buffer = self._buffers.get(shard)
    if buffer is None:
      buffer = self._buffers[shard] = bytearray()
    elif buffer:
      buffer += b'\n'
      self._buffered += 1
    buffer += line
    self._buffered += len(line)
    if len(buffer) < self._chunk_bytes and self._buffered < self._max_buffered:
      return None
    del self._buffers[shard]
    self._buffered -= len(buffer)
    return shard, self._compressor.compress(buffer)

  def drain(self) -> list:
    """The remaining chunks, as global-window values (what `finish_bundle` yields)."""
    buffers, self._buffers, self._buffered = self._buffers, {}, 0
    return [GlobalWindows.windowed_value((shard, self._compressor.compress(buffer)))
            for shard, buffer in buffers.items()]


class ChunkByShardFn(beam.DoFn):
  """element -> (shard, compressed chunk of lines), by `keyed_line(element) -> (key, line)`."""

  def __init__(self, keyed_line: typing.Callable, sharding: Sharding = Sharding()):
    self._keyed_line = keyed_line
    self._sharding = sharding

  def start_bundle(self):
    self._buffer = ChunkBuffer(self._sharding)

  def process(self, element):
    chunk = self._buffer.add(*self._keyed_line(element))
    if chunk is not None:
      yield chunk

  def finish_bundle(self):
    yield from self._buffer.drain()


def records(chunks: typing.Iterable[bytes]) -> typing.Iterator[bytes]:
  """The lines of a shard's chunks (as `ChunkBuffer` emitted them)."""
  decompressor = zstandard.ZstdDecompressor()
  for chunk in chunks:
    yield from decompressor.decompress(chunk).split(b'\n')


class ChunkByShard(beam.PTransform):
  """Input: any elements. Output: `(shard, compressed chunk)` pairs, ready for a GroupByKey on the
  shard (see the module docstring). `keyed_line(element) -> (key, line)`."""

  def __init__(self, keyed_line: typing.Callable, sharding: Sharding = Sharding()):
    super().__init__()
    self._fn = ChunkByShardFn(keyed_line, sharding)

  def expand(self, pcoll):
    return pcoll | beam.ParDo(self._fn).with_output_types(tuple[int, bytes])
