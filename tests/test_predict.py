"""--mode=predict on new images: masks + overlays (segmentation), predictions.csv (classes)."""
import csv
import json
import subprocess

import numpy as np
from PIL import Image

from conftest import launch, require_data


def _predict(workdir, inputs, out):
  proc = launch(['--mode=predict', f'--workdir={workdir}', f'--input={inputs}',
                 f'--output={out}'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  text = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, text[-3000:]
  return text


def test_segmentation_predict_any_size_and_skips_bad_files(tmp_path):
  require_data('glas')
  from configs import warwick_unet
  from histojax import train
  train.train_and_evaluate(warwick_unet.get_config('smoke'), tmp_path / 'w')
  images = tmp_path / 'in'
  images.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (150, 210, 3), dtype=np.uint8)).save(images / 'a.png')
  Image.fromarray(rng.integers(0, 255, (300, 90, 3), dtype=np.uint8)).save(images / 'b.jpg')
  Image.fromarray(rng.integers(0, 255, (64, 70, 3), dtype=np.uint8)).save(images / 'b.png')
  (images / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
  out = tmp_path / 'out'
  text = _predict(tmp_path / 'w', images, out)
  assert 'broken.png' in text and 'skipped 1' in text
  # b.jpg and b.png share a stem: neither output overwrites the other.
  for stem, shape in (('a', (150, 210)), ('b_jpg', (300, 90)), ('b_png', (64, 70))):
    mask = np.asarray(Image.open(out / f'{stem}_mask.png'))
    assert mask.shape == shape and set(np.unique(mask)) <= {0, 255}
    assert np.asarray(Image.open(out / f'{stem}_overlay.png')).shape == shape + (3,)
  # The final report saved its val-chosen post-processing; predict applies it.
  settings = json.loads((tmp_path / 'w' / 'postprocess.json').read_text())
  assert settings['object_min_size'] in warwick_unet.get_config().object_min_size_candidates
  (tmp_path / 'w' / 'postprocess.json').write_text(json.dumps({'object_min_size': 10**9}))
  _predict(tmp_path / 'w', images, tmp_path / 'out2')
  assert not np.asarray(Image.open(tmp_path / 'out2' / 'a_mask.png')).any()


def test_classification_predict_writes_submission_csv(tmp_path):
  require_data('mnist')
  from configs import mnist_cnn
  from histojax import train
  train.train_and_evaluate(mnist_cnn.get_config('smoke'), tmp_path / 'w')
  folder = tmp_path / 'digits'
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(folder / f'{i}.png')
  Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(folder / 'rgb.png')
  Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / 'big.png')
  listing = tmp_path / 'list.csv'
  listing.write_text('filename\n' + '\n'.join(f'digits/{p.name}' for p in sorted(
      folder.iterdir())) + '\ndigits/missing.png\n')
  text = _predict(tmp_path / 'w', listing, tmp_path / 'out')
  assert 'big.png' in text and '40x40 px' in text and 'skipped 2' in text  # + missing.png
  with open(tmp_path / 'out' / 'predictions.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['filename'] for r in rows] == [f'digits/{n}' for n in ('0.png', '1.png', '2.png',
                                                                  'rgb.png')]
  for r in rows:
    probs = [float(r[f'p_{k}']) for k in range(10)]
    assert abs(sum(probs) - 1) < 1e-4 and r['label'] == str(int(np.argmax(probs)))
  # A folder input: rows named by file name, the same probabilities as from the CSV.
  _predict(tmp_path / 'w', folder, tmp_path / 'out_folder')
  with open(tmp_path / 'out_folder' / 'predictions.csv', newline='') as f:
    again = list(csv.DictReader(f))
  assert [r['filename'] for r in again] == ['0.png', '1.png', '2.png', 'rgb.png']
  assert [r['p_3'] for r in again] == [r['p_3'] for r in rows]
