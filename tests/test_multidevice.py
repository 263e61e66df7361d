"""Data parallelism: 8 fake CPU devices in one process, and two processes (multi-host)."""
import re
import socket
import subprocess
import sys

import jax
import numpy as np

from conftest import ROOT, kill_group, launch, require_data
from test_train import _params

SMOKE = f'--config={ROOT}/configs/mnist_cnn.py:smoke'


def test_sharded_step_equals_single_device_and_traces_once():
  out = subprocess.run([sys.executable, str(ROOT / 'tests' / 'multidevice_check.py')],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  assert 'MULTIDEVICE OK' in out.stdout


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_hosts_agree_with_each_other_and_with_one_host(tmp_path):
  """2 processes x 2 fake devices each == 1 process x 4 devices, same config."""
  require_data('mnist')
  # SGD: Adam's early ~lr*sign(grad) steps amplify rounding noise (see multidevice_check.py).
  # Dropout on: the dropout masks depend only on fold_in(rng, step), not on the device count.
  steps = ['--config.total_steps=8', '--config.eval_every_steps=4', '--config.ckpt_every_steps=4',
           '--config.optimizer.name=sgd', '--config.optimizer.lr=0.05',
           '--config.model.dropout=0.25']
  port = _free_port()
  procs = [launch([SMOKE, f'--workdir={tmp_path / "multi"}', *steps,
                   f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                   f'--process_id={i}'], devices=2, stdout=subprocess.PIPE,
                  stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    outs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      kill_group(p)
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  prints = [re.search(r'Params fingerprint \(process (\d)\): (\S+)', o).groups() for o in outs]
  assert sorted(i for i, _ in prints) == ['0', '1']
  assert prints[0][1] == prints[1][1]

  single = launch([SMOKE, f'--workdir={tmp_path / "single"}', *steps], devices=4,
                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  out = single.communicate(timeout=300)[0]
  assert single.returncode == 0, out[-4000:]
  multi_params, _ = _params(tmp_path / 'multi', 8)
  single_params, _ = _params(tmp_path / 'single', 8)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               multi_params, single_params)
