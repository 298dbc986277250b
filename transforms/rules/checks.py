"""Range checks of settings, one message each. Pure functions, no Beam.

`name` is how the message names the value: `--option` for a job option, else its field name.
Infinity and NaN fail too (infinity reached the graph as a Duration and overflowed there).
"""
from __future__ import annotations

import math


def positive(value, name: str) -> None:
  if not (math.isfinite(value) and value > 0):
    raise ValueError(f'{name} must be positive (a finite number), got {value}')


def non_negative(value, name: str) -> None:
  if not (math.isfinite(value) and value >= 0):
    raise ValueError(f'{name} must be zero or more (a finite number), got {value}')
