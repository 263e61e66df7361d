r"""CPU train-step throughput, histojax against the PyTorch peer, alternating, in one run.

  python benchmarks/cpu_compare.py [--benches=mnist_cnn_b64,...] [--repeats=3] [--steps=10]
                                   [--torch_python=/root/torchvenv/bin/python]
                                   [--torch_modes=eager,channels_last,compile]

The torch side is `../shared/peer/peer_torch_cpu.py` as it is (the original project's CNN, the classic U-Net,
ResNet18) and `benchmarks/torch_twins.py` for the `:cpu` recipes' own models. It needs a CPU
build of torch in a Python 3.11 venv (`python3.11 -m venv V && V/bin/pip install
torch==2.13.0+cpu`; benchmark-only, never in requirements.txt).

The histojax side runs the loop's own jitted, donated step (`train.make_train_step` on the
config's model, task and optimizer) on random uint8 batches already on device, under whatever
XLA_FLAGS the environment holds (histojax sets none: see benchmarks/NOTES.md). Each (bench, side) runs in a fresh process; the
sides alternate and their order flips every repeat. Run it on a quiet machine: torch's OpenMP
threads slow down many times when another process shares the cores.

Output: one JSON line per (bench, side, repeat) with `bench`, `side` (histojax | torch),
`img_per_s` (torch: its best mode), then one summary line per bench with the medians and
`ratio` = histojax / torch.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(ROOT, '..', 'shared', 'peer', 'peer_torch_cpu.py')
TWINS = os.path.join(ROOT, 'benchmarks', 'torch_twins.py')
sys.path.insert(0, ROOT)  # configs/ and histojax/, from any working directory

# bench → (config module, config argument, overrides applied to the config, torch script)
BENCHES = {
    'mnist_cnn_b64': ('mnist_cnn', '', dict(batch_size=64), PEER),
    'unet16_128_b8': ('warwick_unet', 'fp32', dict(
        batch_size=8, model=dict(name='unet', features=(16, 32, 64, 128, 256), dropout=0.0),
        data=dict(crop_size=128)), PEER),
    'resnet18_100_b32': ('nuclei_resnet18', 'imagenet,fp32', dict(batch_size=32), PEER),
    # The :cpu recipes' own models at their own batch (torch twins: benchmarks/torch_twins.py).
    'mnist_cnn_cpu_b128': ('mnist_cnn', 'cpu', {}, TWINS),
    'warwick_unet_cpu_b8': ('warwick_unet', 'cpu', {}, TWINS),
    'crchisto_unet_cpu_b8': ('crchisto_nuclei_unet', 'cpu', {}, TWINS),
    'nuclei_resnet18_cpu_b64': ('nuclei_resnet18', 'cpu', {}, TWINS),
    'patches_cnn_cpu_b64': ('patches_cnn', 'cpu', {}, TWINS),
}


def _config(bench):
  import importlib  # pylint: disable=g-import-not-at-top
  module, arg, overrides, _ = BENCHES[bench]
  config = importlib.import_module(f'configs.{module}').get_config(arg or None)
  for key, value in overrides.items():
    if isinstance(value, dict) and key != 'model':
      config[key].update(value)
    else:
      config[key] = value
  return config


def _random_batch(config, rng):
  """One global batch of the shapes the task's training stream yields."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  b = config.batch_size
  if config.task == 'segmentation':
    s = config.data.crop_size
    return {'image': rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
            'mask': rng.integers(0, 2, (b, s, s), dtype=np.int32)}
  side, channels, classes = {'mnist': (28, 1, 10), 'glas_tiles': (config.data.tile_size, 3, 2)
                             }.get(config.dataset, (100, 3, 4))
  return {'image': rng.integers(0, 256, (b, side, side, channels), dtype=np.uint8),
          'label': rng.integers(0, classes, b).astype(np.int32)}


def time_train_step(config, host, num_classes, steps, warm=3, schedule=(1000, 10000)):
  """(seconds for `steps` steps, first-step seconds) of the loop's jitted, donated train step
  on `host` (one global batch of numpy arrays), after compile and `warm` steps."""
  import jax  # pylint: disable=g-import-not-at-top
  from histojax import models, schedules, sharding, tasks, train  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(config)
  task = tasks.get_task(config, {'num_classes': num_classes})
  model = models.get_model(config, task.out_channels if config.task == 'segmentation'
                           else num_classes)
  tx, _ = schedules.optimizer(config, *schedule)
  batch = sharding.to_global(mesh, host)
  init_rng, train_rng = jax.random.split(jax.random.key(0))
  state = jax.jit(train.make_init(model, task, tx, host),
                  out_shardings=sharding.replicated(mesh))(init_rng)
  step = jax.jit(train.make_train_step(model, task, tx, train_rng), donate_argnums=(0,))
  t0 = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - t0
  for _ in range(warm - 1):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready((state, metrics))
  return time.perf_counter() - t0, first


def num_classes(config):
  return {'mnist': 10, 'glas': 2, 'crchisto_points': 2, 'glas_tiles': 2}.get(config.dataset, 4)


def time_histojax(bench, steps):
  """img/s of the loop's train step on `bench`'s config."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  config = _config(bench)
  host = _random_batch(config, np.random.default_rng(0))
  seconds, first = time_train_step(config, host, num_classes(config), steps)
  return {'bench': bench, 'side': 'histojax', 'batch': config.batch_size,
          'dtype': config.dtype, 'img_per_s': round(config.batch_size * steps / seconds, 2),
          'ms_per_step': round(1000 * seconds / steps, 1), 'first_step_s': round(first, 2),
          'xla_flags': os.environ.get('XLA_FLAGS', '')}


def _run_side(args, bench, side):
  if side == 'histojax':
    cmd = [sys.executable, __file__, '--worker', bench, f'--steps={args.steps}']
  else:
    cmd = [args.torch_python, BENCHES[bench][3], f'--benches={bench}',
           f'--modes={args.torch_modes}', f'--steps={args.steps}']
  out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
  rows = [json.loads(line) for line in out.splitlines() if line.startswith('{')]
  if side == 'torch':
    best = [r for r in rows if str(r.get('mode', '')).startswith('best:')]
    if not best:
      raise RuntimeError(f'torch side of {bench} printed no best line:\n{out}')
    return dict(best[0], modes={r['mode']: r.get('img_per_s') for r in rows
                                if not str(r.get('mode', '')).startswith('best:')})
  return rows[-1]


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--benches', default=','.join(BENCHES))
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--torch_python', default=os.environ.get('TORCH_PYTHON',
                                                         '/root/torchvenv/bin/python'))
  p.add_argument('--torch_modes', default='eager,channels_last,compile')
  p.add_argument('--sides', default='histojax,torch')
  p.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    print(json.dumps(time_histojax(args.worker, args.steps)), flush=True)
    return
  sides = args.sides.split(',')
  results = {}
  for repeat in range(args.repeats):
    for bench in args.benches.split(','):
      for side in (sides if repeat % 2 == 0 else sides[::-1]):
        row = dict(_run_side(args, bench, side), repeat=repeat)
        results.setdefault((bench, side), []).append(row['img_per_s'])
        print(json.dumps(row), flush=True)
  for bench in args.benches.split(','):
    summary = {'bench': bench, 'summary': True}
    for side in sides:
      summary[side] = statistics.median(results[(bench, side)])
    if len(sides) == 2:
      summary['ratio'] = round(summary['histojax'] / summary['torch'], 3)
    print(json.dumps(summary), flush=True)


if __name__ == '__main__':
  main()
