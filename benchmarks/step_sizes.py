r"""The loop's train step at several values of one shape key, e.g. the input size.

  python benchmarks/step_sizes.py --bench=nuclei_resnet18_cpu_b64 --key=data.center_crop \
      --values=0,64,72,80 [--steps=5]

`--bench` names a config in `cpu_compare.BENCHES`; each value of `--key` is set on it in turn
and the step timed on random batches as `cpu_compare.py` times it (quiet machine). One JSON line
per value: `value`, `ms_per_step`, `img_per_s`, `first_step_s`.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_compare  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  p.add_argument('--bench', required=True, choices=sorted(cpu_compare.BENCHES))
  p.add_argument('--key', required=True, help='a config key, e.g. data.center_crop')
  p.add_argument('--values', required=True, help='comma-separated integers')
  p.add_argument('--steps', type=int, default=5)
  args = p.parse_args()
  import numpy as np  # pylint: disable=g-import-not-at-top
  for value in map(int, args.values.split(',')):
    config = cpu_compare._config(args.bench)  # pylint: disable=protected-access
    *parents, leaf = args.key.split('.')
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = value
    host = cpu_compare._random_batch(config, np.random.default_rng(0))  # pylint: disable=protected-access
    seconds, first = cpu_compare.time_train_step(config, host, cpu_compare.num_classes(config),
                                                 args.steps)
    print(json.dumps({'bench': args.bench, 'key': args.key, 'value': value,
                      'ms_per_step': round(1000 * seconds / args.steps, 1),
                      'img_per_s': round(config.batch_size * args.steps / seconds, 2),
                      'first_step_s': round(first, 2)}), flush=True)


if __name__ == '__main__':
  main()
