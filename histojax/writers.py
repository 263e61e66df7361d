"""metrics.jsonl + TensorBoard (tensorboardX, no TensorFlow) + a console progress line.

metrics.jsonl is append-only, one JSON object per line, each written whole and flushed, so a
crash can tear at most the line being written; the next run drops such a torn tail (warning)
before appending. Rows repeat when a run resumes from a checkpoint older than its last log
line, or is extended after its final report: readers take, for each key, the last row that has
it (`latest`), and for curves the last value per step (`by_step`).
"""
import contextlib
import json
import logging
import os
import pathlib
import time

import numpy as np

from histojax import workdir as workdir_lib


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

  def write_config(self, step, config: dict, metrics=()):
    """TensorBoard: the config as text and as hparams (every flattened key), so that runs can
    be compared and filtered by configuration; `metrics`: the scalar tags to show beside."""
    if not self.enabled:
      return
    from tensorboardX.summary import hparams  # pylint: disable=g-import-not-at-top
    text = json.dumps(config, indent=2, default=str)
    self._tb.add_text('config', '\n'.join('    ' + line for line in text.splitlines()),
                      int(step))
    # hparams take bool / int / float / str: anything else as its JSON.
    flat = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in workdir_lib.flatten(config).items()}
    for summary in hparams(flat, {m: 0.0 for m in metrics}):
      self._tb.file_writer.add_summary(summary)

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
_CPU_ORIGIN = 0.0  # CPU seconds of this process (and children) before the current run


@contextlib.contextmanager
def cost_from_now():
  """Within it, a run counts its cost (CPU and wall seconds) from now instead of from process
  start: a sweep runs its trials one after another in one process, each with its own cost.
  Yields a Cost of what is spent within; the origin is restored on exit."""
  global _STARTED, _CPU_ORIGIN
  saved = _STARTED, _CPU_ORIGIN
  now_cpu = Cost().cpu_seconds() + _CPU_ORIGIN  # the process total
  _STARTED, _CPU_ORIGIN = time.time(), now_cpu
  try:
    yield Cost()
  finally:
    _STARTED, _CPU_ORIGIN = saved


def child_pids():
  """Pids of this process's live child processes (Linux /proc; [] elsewhere)."""
  try:
    tasks = list(pathlib.Path('/proc/self/task').iterdir())
  except OSError:
    return []
  pids = []
  for task in tasks:
    try:
      pids += (task / 'children').read_text().split()
    except OSError:
      continue
  return pids


def _live_children_cpu():
  """User + system CPU seconds of this process's live children (grain workers): os.times()
  counts children only once they have exited and been waited for."""
  total, tick = 0.0, os.sysconf('SC_CLK_TCK')
  for pid in child_pids():
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
            + _live_children_cpu() - _CPU_ORIGIN)

  def wall_seconds(self):
    return self.carried_wall + time.time() - _STARTED

  def scalars(self, prefix):
    return {f'{prefix}/cpu_seconds': self.cpu_seconds(),
            f'{prefix}/wall_seconds': self.wall_seconds()}


def format_rate(rate, unit):
  """'12.3 steps/s', or '4.2 s/step' below one per second (never '0.0 steps/s')."""
  return f'{rate:.1f} {unit}s/s' if rate >= 1 else f'{1 / rate:.1f} s/{unit}'


def format_duration(seconds):
  """'45s', '12m30s', '3h05m', '2d04h'."""
  s = int(round(seconds))
  if s < 60:
    return f'{s}s'
  m, s = divmod(s, 60)
  if m < 60:
    return f'{m}m{s:02d}s'
  h, m = divmod(m, 60)
  if h < 24:
    return f'{h}h{m:02d}m'
  d, h = divmod(h, 24)
  return f'{d}d{h:02d}h'


class Progress:
  """Console lines of the train loop: one when the first step of this start has run (it
  includes compilation, which can take minutes on a CPU), then step, scalars, rate and ETA,
  timed from the end of that first step."""

  def __init__(self, total_steps, first_step):
    self.total, self.t0, self.s0 = total_steps, None, first_step

  def started(self, step, seconds):
    logging.info('step %d/%d | compiled and ran the first step in %.1f s', step, self.total,
                 seconds)
    self.t0, self.s0 = time.perf_counter(), step

  def line(self, step, scalars):
    """Logs one line; returns the rate in steps/s (NaN while it cannot be measured yet)."""
    now = time.perf_counter()
    if self.t0 is None:  # no started(): time from here on
      self.t0, self.s0 = now, step
    rate = (step - self.s0) / max(now - self.t0, 1e-9) if step > self.s0 else float('nan')
    parts = ' '.join(f'{k.split("/")[-1]} {v:.4g}' for k, v in scalars.items())
    if rate > 0:
      speed = (f'{format_rate(rate, "step")} | '
               f'ETA {format_duration((self.total - step) / rate)}')
    else:
      speed = 'rate and ETA from the next log line'
    logging.info('step %d/%d | %s | %s', step, self.total, parts, speed)
    return rate


# The console's validation line: the selection metric with the best so far, then the first
# few of these that the task reports (every scalar goes to metrics.jsonl).
KEY_SCALARS = ('loss', 'accuracy', 'balanced_accuracy', 'macro_f1', 'dice', 'mean_iou',
               'object_f1', 'detection_f1', 'pixel_accuracy')


def val_line(step, val, loop, best_metric):
  """'step 600 | val dice 0.8123 (best 0.8123 @600) | loss 0.23 accuracy 0.91', at most four
  key scalars and about 160 characters."""
  best = (f'best {loop["best_value"]:.4f} @{loop["best_step"]}'
          if loop['best_step'] is not None else 'no best yet')
  head = f'step {step} | val {best_metric.split("/", 1)[-1]} {val[best_metric]:.4f} ({best})'
  shown = []
  for key in KEY_SCALARS:
    value = val.get(f'val/{key}')
    if value is None or f'val/{key}' == best_metric:
      continue
    if len(shown) == 4 or len(head) + sum(len(s) + 1 for s in shown) + len(key) + 12 > 160:
      break
    shown.append(f'{key} {value:.4g}')
  return ' | '.join([head] + ([' '.join(shown)] if shown else []))
