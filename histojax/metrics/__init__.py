"""Evaluation metrics computed on host from accumulated counts."""
import numpy as np


def divide(num, den, empty=0.0):
  """num / den elementwise in float64, `empty` where den == 0 (without a divide warning):
  0 for precision-like ratios, NaN where the caller applies its own empty-mask policy."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, empty, np.float64),
                   where=den != 0)
