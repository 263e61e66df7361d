r"""Are two final reports the same? The last final_val/ and test-part metrics of workdir pairs.

  python benchmarks/compare_final_metrics.py W_BEFORE W_AFTER [W_BEFORE2 W_AFTER2 ...] [--tol=1e-6]

For a refactor that must keep every number: copy a trained workdir twice, run
`launch.py --mode=eval --config=... --workdir=COPY` on each copy with the code before and after
(e.g. from two `git worktree`s), then compare the copies. Exits 1 when any metric differs by
more than --tol or exists on one side only.
"""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from histojax import writers  # pylint: disable=wrong-import-position

PARTS = ('final_val/', 'test/', 'testA/', 'testB/')


def final_metrics(workdir):
  rows = writers.read_jsonl(pathlib.Path(workdir) / 'metrics.jsonl')
  out = {}
  for prefix in PARTS:
    out.update(writers.latest(rows, prefix))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--tol', type=float, default=1e-6)
  args = parser.parse_args()
  if len(args.workdirs) % 2:
    sys.exit('Give workdirs in pairs: BEFORE AFTER ...')
  failed = False
  for before, after in zip(args.workdirs[::2], args.workdirs[1::2]):
    a, b = final_metrics(before), final_metrics(after)
    keys = sorted(set(a) | set(b))
    bad = [k for k in keys if k not in a or k not in b or abs(a[k] - b[k]) > args.tol]
    worst = max((abs(a[k] - b[k]) for k in keys if k in a and k in b), default=0.0)
    print(f'{after}: {len(keys)} final metrics, max |difference| {worst:.2e}'
          + (f'; differ or one-sided: {bad}' if bad else ''))
    failed |= bool(bad) or not keys
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  main()
