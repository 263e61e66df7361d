"""--mode=predict on new images: masks + overlays (segmentation), predictions.csv (classes)."""
import csv
import json
import subprocess

import numpy as np
from PIL import Image

from conftest import launch, require_data


def _predict(workdir, inputs, out, *flags):
  proc = launch(['--mode=predict', f'--workdir={workdir}', f'--input={inputs}',
                 f'--output={out}', *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  text = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, text[-3000:]
  return text


def test_segmentation_predict_any_size_and_skips_bad_files(tmp_path):
  require_data('glas')
  from configs import warwick_unet
  from histojax import export, train
  config = warwick_unet.get_config('smoke')
  config.data.scale = 0.5  # the model runs downsampled; every output is at full resolution
  train.train_and_evaluate(config, tmp_path / 'w')
  images = tmp_path / 'in'
  images.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (150, 210, 3), dtype=np.uint8)).save(images / 'a.png')
  Image.fromarray(rng.integers(0, 255, (300, 90, 3), dtype=np.uint8)).save(images / 'b.jpg')
  Image.fromarray(rng.integers(0, 255, (64, 70, 3), dtype=np.uint8)).save(images / 'b.png')
  (images / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
  out = tmp_path / 'out'
  text = _predict(tmp_path / 'w', images, out, '--save_probs', '--microns_per_pixel=0.5')
  assert 'broken.png' in text and 'skipped 1' in text
  classes = json.loads((out / 'classes.json').read_text())
  assert [(c['index'], c['name']) for c in classes] == [(0, 'background'), (1, 'gland')]
  # b.jpg and b.png share a stem: neither output overwrites the other.
  for stem, shape in (('a', (150, 210)), ('b_jpg', (300, 90)), ('b_png', (64, 70))):
    with Image.open(out / f'{stem}_mask.png') as png:  # palette PNG: value = class index
      assert png.mode == 'P'
      assert png.getpalette()[3:6] == classes[1]['color']
      mask = np.asarray(png)
    assert mask.shape == shape and set(np.unique(mask)) <= {0, 1}
    probs = np.load(out / f'{stem}_probs.npy')
    assert probs.shape == shape + (2,) and probs.dtype == np.float16
    overlay = np.asarray(Image.open(out / f'{stem}_overlay.png'))
    assert overlay.shape[1:] == (shape[1], 3) and overlay.shape[0] > shape[0]  # + title, legend
    # QuPath objects: full-resolution pixel polygons that rasterise back to the mask.
    fc = json.loads((out / f'{stem}.geojson').read_text(encoding='utf-8'))
    assert fc['type'] == 'FeatureCollection'
    assert np.array_equal(export.rasterize(fc, shape, ['background', 'gland']), mask)
    for feature in fc['features']:
      props = feature['properties']
      assert props['objectType'] == 'annotation'
      assert props['classification']['name'] == 'gland'
      m = props['measurements']
      assert m['Area µm^2'] == m['Area px^2'] * 0.25 and 0.5 <= m['Mean probability'] <= 1
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
