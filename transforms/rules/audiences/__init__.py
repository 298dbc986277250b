"""Audiences and computed traits declared in a file (docs/AUDIENCES.md). Pure, no Beam.

`expressions.py` compiles and evaluates the definitions' CEL expressions.
"""
