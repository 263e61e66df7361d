"""metrics.jsonl + TensorBoard (tensorboardX, no TensorFlow) + a console progress line."""
import json
import logging
import pathlib
import time

import numpy as np


class MetricWriter:
  """Writes only on process 0. Each metrics.jsonl line: {"step": int, "<split>/<name>": x}."""

  def __init__(self, workdir, enabled=True):
    self.enabled = enabled
    self._tb = None
    if enabled:
      workdir = pathlib.Path(workdir)
      self._jsonl = open(workdir / 'metrics.jsonl', 'a', encoding='utf-8')
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(workdir / 'tensorboard'))

  def write(self, step, scalars):
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    # NaN (e.g. Dice of a class absent from every image) is written as null: valid JSON.
    row = {k: (v if np.isfinite(v) else None) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), **row}) + '\n')
    self._jsonl.flush()
    for k, v in row.items():
      if v is not None:
        self._tb.add_scalar(k, v, int(step))

  def write_images(self, step, images: dict[str, np.ndarray]):
    if self.enabled:
      for k, v in images.items():
        self._tb.add_image(k, v, int(step), dataformats='HWC')

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def read_jsonl(path):
  path = pathlib.Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Progress:
  """Console line: step, rate and ETA, measured since the first logged step (post-compile)."""

  def __init__(self, total_steps, first_step):
    self.total, self.t0, self.s0 = total_steps, None, first_step

  def line(self, step, scalars):
    now = time.perf_counter()
    if self.t0 is None:
      self.t0, self.s0 = now, step
      rate = float('nan')
    else:
      rate = (step - self.s0) / max(now - self.t0, 1e-9)
    parts = ' '.join(f'{k.split("/")[-1]} {v:.4g}' for k, v in scalars.items())
    if rate == rate and rate > 0:
      eta = (self.total - step) / rate
      speed = f'{rate:.1f} steps/s | ETA {int(eta // 60)}m{int(eta % 60):02d}s'
    else:  # the first logged step includes compilation, so it cannot time anything
      speed = 'rate and ETA from the next log line'
    logging.info('step %d/%d | %s | %s', step, self.total, parts, speed)
    return rate
