"""transforms/shards.py: records reach their shard whole and once, whatever the chunk size."""
import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from tests.unit.beam_helpers import batch_pipeline
from transforms import shards


def test_shard_of_is_stable_and_in_range():
  assert shards.shard_of('customer-1', 256) == shards.shard_of('customer-1', 256)
  assert {shards.shard_of(f'k{i}', 7) for i in range(500)} == set(range(7))
  # CRC-32, not the per-process salted hash(): a fixed value
  assert shards.shard_of('abc', 1000) == 891568578 % 1000


@pytest.mark.parametrize('chunk_bytes', [1, 10, 1 << 20])
def test_chunk_buffer_returns_every_line_once_in_its_shard(chunk_bytes):
  buffer = shards.ChunkBuffer(shards.Sharding(shards=5, chunk_bytes=chunk_bytes))
  lines = {f'key{i % 40}': [] for i in range(40)}
  chunks = []
  for i in range(400):
    key = f'key{i % 40}'
    line = f'{{"n":{i}}}'.encode()
    lines[key].append(line)
    chunk = buffer.add(key, line)
    if chunk is not None:
      chunks.append(chunk)
  chunks += [value.value for value in buffer.drain()]
  assert buffer.drain() == []
  by_shard: dict[int, list] = {}
  for shard, chunk in chunks:
    by_shard.setdefault(shard, []).append(chunk)
  for shard, shard_chunks in by_shard.items():
    expected = sorted(line for key, key_lines in lines.items()
                      if shards.shard_of(key, 5) == shard for line in key_lines)
    assert sorted(shards.records(shard_chunks)) == expected
  assert len(list(shards.records(chunk for _, chunk in chunks))) == 400
  if chunk_bytes == 1:
    assert len(chunks) == 400  # a chunk per line
  if chunk_bytes == 1 << 20:
    assert len(chunks) == 5  # a chunk per shard, at the end of the bundle


def test_chunks_compress_repetitive_lines():
  buffer = shards.ChunkBuffer(shards.Sharding(shards=1, chunk_bytes=1 << 20))
  line = b'{"type":"track","event":"Product Viewed","context":{"userAgent":"Mozilla/5.0"}}'
  for _ in range(1000):
    buffer.add('k', line)
  [value] = buffer.drain()
  _, chunk = value.value
  assert len(chunk) * 20 < 1000 * len(line)


def test_chunk_by_shard_and_group_by_key_bring_a_shards_records_together():
  elements = [(f'c{i % 13}', i) for i in range(200)]
  with batch_pipeline() as p:
    grouped = (p
               | beam.Create(elements)
               | shards.ChunkByShard(lambda kv: (kv[0], f'{kv[0]}:{kv[1]}'.encode()),
                                     shards.Sharding(shards=4, chunk_bytes=64))
               | beam.GroupByKey()
               | beam.MapTuple(lambda shard, chunks: (shard, sorted(shards.records(chunks)))))
    expected: dict[int, list] = {}
    for key, value in elements:
      expected.setdefault(shards.shard_of(key, 4), []).append(f'{key}:{value}'.encode())
    assert_that(grouped, equal_to([(s, sorted(v)) for s, v in expected.items()]))


def test_zero_shards_is_refused():
  with pytest.raises(ValueError, match='shards'):
    shards.Sharding(shards=0)


def test_many_shards_stay_within_the_memory_bound_and_lose_nothing():
  buffer = shards.ChunkBuffer(shards.Sharding(shards=4096, chunk_bytes=1 << 20),
                              max_buffered=10_000)
  chunks, sent = [], []
  for i in range(5000):
    line = f'{{"n":{i},"pad":"{"x" * 40}"}}'.encode()
    sent.append(line)
    chunk = buffer.add(f'key{i}', line)
    if chunk is not None:
      chunks.append(chunk)
    assert buffer._buffered < 10_000 + len(line)
  assert len(chunks) > 10  # emitted early: no shard's buffer came near 1 MiB
  chunks += [value.value for value in buffer.drain()]
  assert sorted(shards.records(chunk for _, chunk in chunks)) == sorted(sent)
