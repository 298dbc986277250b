"""Packaging for the personalization pipeline.

This is what Dataflow workers install (`--setup_file ./setup.py`) and what the flex template
launcher installs; it carries the schema files as package data.
"""
import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent


def _requirements(name: str = 'requirements.txt'):
  lines = (HERE / name).read_text().splitlines()
  return [line.strip() for line in lines if line.strip() and not line.startswith('#')]


setuptools.setup(
    name='email-personalization-pipeline',
    version='0.1.0',
    description='Real-time email personalization pipeline on Apache Beam',
    python_requires='>=3.11,<3.12',
    packages=setuptools.find_packages(
        include=['pipeline', 'pipeline.*', 'transforms', 'transforms.*', 'schemas',
                 'schemas.*', 'connector', 'connector.*', 'collector', 'collector.*']),
    package_data={'schemas': ['*.json', '*.avsc']},
    install_requires=_requirements(),
    extras_require={'connector': _requirements('connector/requirements.txt'),
                    'collector': _requirements('collector/requirements.txt')},
)
