"""The batch benchmarks run end to end on a small input: the graph and the plain loop produce the
same outputs (the benchmark's own check), and the stage profile lists the graph's stages."""
import json

from bench import stages, throughput


def test_throughput_benchmark_sides_agree_on_a_small_input(tmp_path, capsys):
  assert throughput.main(['--events', '3000', '--repeat', '1', '--workdir', str(tmp_path)]) == 0
  [result_file] = tmp_path.glob('throughput-*.json')
  result = json.loads(result_file.read_text())
  assert result['events'] == 3000
  assert result['loop_events_per_s'] > 0 and result['graph_events_per_s'] > 0
  assert result['peak_rss_mb_graph'] > 0
  assert 'outputs identical' in capsys.readouterr().out


def test_fingerprints_differ_when_one_document_differs(tmp_path):
  throughput.main(['--events', '1000', '--repeat', '1', '--workdir', str(tmp_path)])
  loop, graph = tmp_path / 'out-loop', tmp_path / 'out-graph'
  assert throughput.outputs_fingerprint(loop) == throughput.outputs_fingerprint(graph)
  documents = loop / 'documents.jsonl'
  lines = documents.read_bytes().splitlines()
  lines[0] = lines[0].replace(b'"customer_id":"', b'"customer_id":"x', 1)
  documents.write_bytes(b'\n'.join(lines))
  assert throughput.outputs_fingerprint(loop) != throughput.outputs_fingerprint(graph)


def test_stage_profile_lists_the_graphs_stages(tmp_path, capsys):
  assert stages.main(['--events', '1000', '--workdir', str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert 'stages;' in out
  assert 'DedupeEvents-KeepFirst' in out and 'ParseEvents' in out
