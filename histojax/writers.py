"""metrics.jsonl + TensorBoard (tensorboardX, no TensorFlow) + a console progress line.

metrics.jsonl is append-only, one JSON object per line, each written whole and flushed, so a
crash can tear at most the line being written; the next run drops such a torn tail (warning)
before appending. Rows repeat when a run resumes from a checkpoint older than its last log
line, or is extended after its final report: readers take, for each key, the last row that has
it (`latest`), and for curves the last value per step (`by_step`).
"""
import json
import logging
import os
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
      repair_torn_tail(workdir / 'metrics.jsonl')
      self._jsonl = open(workdir / 'metrics.jsonl', 'a', encoding='utf-8')
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(workdir / 'tensorboard'))

  def write(self, step, scalars):
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    # NaN (e.g. Dice of a class absent from every image) is written as null: valid JSON.
    row = {k: (v if np.isfinite(v) else None) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), **row}) + '\n')  # one write per row
    self._jsonl.flush()
    os.fsync(self._jsonl.fileno())
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


def repair_torn_tail(path):
  """Cuts a last line that a crash left unfinished (no newline at the end of the file)."""
  path = pathlib.Path(path)
  if not path.exists() or path.stat().st_size == 0:
    return
  data = path.read_bytes()
  if data.endswith(b'\n'):
    return
  keep = data.rfind(b'\n') + 1
  logging.warning('%s ended in a torn line (%d bytes, from a crash mid-write); dropped it: %r',
                  path, len(data) - keep, data[keep:keep + 80])
  with open(path, 'r+b') as f:
    f.truncate(keep)


def read_jsonl(path):
  """Rows of metrics.jsonl; a line that is not JSON (torn by a crash) is skipped, warned."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  rows = []
  for n, line in enumerate(path.read_text(encoding='utf-8', errors='replace').splitlines(), 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except ValueError:
      logging.warning('%s:%d is not a JSON line (torn by a crash?); skipped.', path, n)
  return rows


def latest(rows, prefix=''):
  """{key: value} from the last row that has each key starting with `prefix`."""
  out = {}
  for row in rows:
    out.update({k: v for k, v in row.items() if k.startswith(prefix) and k != 'step'})
  return out


def by_step(rows, key):
  """[(step, value)] of `key`, the last row winning for a repeated step, sorted by step."""
  return sorted({r['step']: r[key] for r in rows if key in r}.items())


def _process_start():
  """Wall-clock time this process started (Linux /proc), else now (module import)."""
  try:
    ticks = int(pathlib.Path('/proc/self/stat').read_text().rsplit(')', 1)[1].split()[19])
    uptime = float(pathlib.Path('/proc/uptime').read_text().split()[0])
    return time.time() - uptime + ticks / os.sysconf('SC_CLK_TCK')
  except (OSError, ValueError, IndexError):
    return time.time()


_STARTED = _process_start()


def _live_children_cpu():
  """User + system CPU seconds of this process's live children (grain workers): os.times()
  counts children only once they have exited and been waited for."""
  total, tick = 0.0, os.sysconf('SC_CLK_TCK')
  try:
    tasks = list(pathlib.Path('/proc/self/task').iterdir())
  except OSError:
    return 0.0
  for task in tasks:
    try:
      children = (task / 'children').read_text().split()
    except OSError:
      continue
    for pid in children:
      try:
        fields = pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
      except (OSError, ValueError, IndexError):
        continue  # exited meanwhile: os.times() has it once waited for
  return total


class Cost:
  """Compute spent on a run, summed over its starts: CPU seconds (user + system of this
  process and its children, live grain workers included) and wall seconds, each from process
  start (imports, dataset build and compile count). `carried` comes from the loop state of
  the checkpoint a run resumes from; work after a killed run's last checkpoint is not
  counted."""

  def __init__(self):
    self.carried_cpu, self.carried_wall = 0.0, 0.0

  def resume(self, loop):
    self.carried_cpu = float(loop.get('cpu_seconds') or 0.0)
    self.carried_wall = float(loop.get('wall_seconds') or 0.0)

  def cpu_seconds(self):
    t = os.times()
    return (self.carried_cpu + t.user + t.system + t.children_user + t.children_system
            + _live_children_cpu())

  def wall_seconds(self):
    return self.carried_wall + time.time() - _STARTED

  def scalars(self, prefix):
    return {f'{prefix}/cpu_seconds': self.cpu_seconds(),
            f'{prefix}/wall_seconds': self.wall_seconds()}


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
