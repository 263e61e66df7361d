"""The original project's Kaggle layout: train.csv (filename,label) + a folder of 100x100 patches, RGB or
grayscale; training by config argument alone, then a predictions.csv for an unlabelled folder."""
import csv

import numpy as np
import pytest
from PIL import Image

from histojax.data import augment, paths

from test_predict import _predict
from test_transfer import _torchvision_resnet18_npz


def _kaggle_layout(root, gray=False, n=72, size=100):
  """Patches whose class (0, 1, 2) sets the brightness, listed in a Kaggle-style CSV."""
  rng = np.random.default_rng(0)
  (root / 'train').mkdir(parents=True)
  (root / 'test').mkdir()
  rows = ['Filename,Label']
  for i in range(n):
    label = i % 3
    shape = (size, size) if gray else (size, size, 3)
    image = np.clip(60 + 70 * label + rng.normal(0, 10, shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(root / 'train' / f'{i:04d}.png')
    rows.append(f'{i:04d}.png,{label}')
    if i < 5:
      Image.fromarray(image).save(root / 'test' / f't{i}.png')
  (root / 'train.csv').write_text('\n'.join(rows) + '\n')


@pytest.mark.parametrize('gray', [False, True], ids=['rgb', 'gray'])
def test_original_kaggle_layout_trains_and_writes_submission(tmp_path, gray):
  from configs import nuclei_cnn
  from histojax import train
  _kaggle_layout(tmp_path / 'kaggle', gray)
  arg = f'smoke,csv={tmp_path / "kaggle" / "train.csv"},images={tmp_path / "kaggle" / "train"}'
  config = nuclei_cnn.get_config(arg + (',gray' if gray else ''))
  config.explain_samples = 0
  results = train.train_and_evaluate(config, tmp_path / 'w')
  assert 0 < results['test']['count'] + results['val']['count'] < 72
  report = (tmp_path / 'w' / 'report.md').read_text()
  assert 'split is by patch' in report

  _predict(tmp_path / 'w', tmp_path / 'kaggle' / 'test', tmp_path / 'out')
  with open(tmp_path / 'out' / 'predictions.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['filename'] for r in rows] == [f't{i}.png' for i in range(5)]
  assert {r['label'] for r in rows} <= {'0', '1', '2'}
  assert all(abs(sum(float(r[f'p_{k}']) for k in '012') - 1) < 1e-4 for r in rows)


def test_kaggle_layout_bad_inputs_name_the_file(tmp_path):
  from configs import nuclei_cnn
  from histojax.data import datasets
  _kaggle_layout(tmp_path / 'k', gray=True, n=6)
  csv_path, images = tmp_path / 'k' / 'train.csv', tmp_path / 'k' / 'train'
  with pytest.raises(paths.DataError, match='0000.png.*grayscale|0000.png.*RGB'):
    datasets.get_splits(nuclei_cnn.get_config(f'csv={csv_path},images={images}'))
  Image.fromarray(np.zeros((90, 100), np.uint8)).save(images / '0003.png')
  with pytest.raises(paths.DataError, match='0003.png is 100x90.*data.patch_size'):
    datasets.get_splits(nuclei_cnn.get_config(f'csv={csv_path},images={images},gray'))
  with pytest.raises(ValueError, match='images=DIR'):
    nuclei_cnn.get_config(f'csv={csv_path}')


def test_integer_labels_sort_numerically(tmp_path):
  from histojax.data.sources import folders
  (tmp_path / 'im').mkdir()
  rows = []
  for i, label in enumerate(['10', '2', '0']):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / 'im' / f'{i}.png')
    rows.append(f'{i}.png,{label}')
  (tmp_path / 'l.csv').write_text('\n'.join(rows))
  records, names = folders.csv_labels(tmp_path / 'l.csv', tmp_path / 'im')
  assert names == ['0', '2', '10'] and [r.label for r in records] == [2, 1, 0]


def test_grayscale_augment_equals_rgb_augment_of_equal_channels():
  rng = np.random.default_rng(0)
  gray = rng.integers(0, 255, (40, 50, 1), dtype=np.uint8)
  params = dict(augment.FLIPS_ONLY, rotate_deg=30.0, brightness=0.2, contrast=0.2, crop_size=32)
  out, _ = augment.augment(gray, None, params, seed=0, epoch=1, index=7)
  rgb, _ = augment.augment(np.repeat(gray, 3, 2), None, params, seed=0, epoch=1, index=7)
  assert out.shape == (32, 32, 1)
  np.testing.assert_array_equal(out[..., 0], rgb[..., 0])
  np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
  with pytest.raises(ValueError, match='hed_sigma.*grayscale'):
    augment.augment(gray, None, dict(hed_sigma=0.05), seed=0, epoch=0, index=0)


def test_torchvision_npz_first_conv_summed_for_grayscale(tmp_path):
  from histojax import checkpoint
  arrays = _torchvision_resnet18_npz(tmp_path / 'r18.npz')
  source = checkpoint.load_variables(tmp_path / 'r18.npz', in_channels=1)
  kernel = source['params']['conv1']['kernel']
  assert kernel.shape == (7, 7, 1, 64)
  np.testing.assert_allclose(kernel[:, :, 0, :],
                             arrays['conv1.weight'].sum(1).transpose(1, 2, 0), rtol=1e-6)
