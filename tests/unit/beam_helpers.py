"""Shared helpers for TestPipeline tests (batch on the FnApiRunner, as the brief asks)."""
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline


def batch_pipeline(**options) -> TestPipeline:
  return TestPipeline(runner='FnApiRunner', options=PipelineOptions(flags=[], **options))
