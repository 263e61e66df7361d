"""`python -m histojax.data.show`: the augmented training crops a person checks by eye."""
import subprocess
import sys

import numpy as np

from conftest import ROOT, require_data


def test_sample_examples_match_training_crops_and_grid_is_written(tmp_path):
  require_data('glas')
  from configs import warwick_unet
  from histojax.data import show
  config = warwick_unet.get_config('smoke')
  examples, names = show.sample_examples(config, 3)
  assert names == ['background', 'gland']
  for e in examples:
    assert e['image'].shape == (64, 64, 3) and e['mask'].shape == (64, 64)
    assert set(np.unique(e['mask'])) <= {0, 1}
  again, _ = show.sample_examples(config, 3)  # pure in (seed, epoch, index)
  np.testing.assert_array_equal(again[2]['image'], examples[2]['image'])
  out = tmp_path / 'grid.png'
  proc = subprocess.run([sys.executable, '-m', 'histojax.data.show',
                         f'--config={ROOT}/configs/warwick_unet.py:smoke', f'--out={out}',
                         '--n=4'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  from PIL import Image
  with Image.open(out) as png:
    rgb = np.asarray(png.convert('RGB'))
  assert rgb.shape[:2] == (320, 1200)  # one row of 4 panels, 3 x 3.2 inches each at 100 dpi
  assert (rgb.reshape(-1, 3).std(0) > 20).all()  # images drawn, not a blank canvas
