"""Reproduced data faults, each fixed: a stale derived-data cache (edited masks and labels,
lost side file), 16-bit RGB read as dark 8-bit, macOS dot files, CSV label typos becoming
classes, and malformed inputs that must each give one DataError naming the file."""
import json
import logging
import os
import struct
import zlib

import numpy as np
import pytest
import scipy.io
from PIL import Image

from histojax.data import build, paths
from histojax.data.sources import brecahad, common, crchisto, folders

from test_data_sources import _crc_fixture, _glas_fixture


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv('HISTOJAX_CACHE', str(tmp_path / 'cache'))
  return tmp_path / 'cache' / 'tfds'


def _rgb(h=16, w=16, seed=0):
  return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _blob_mask(top):
  mask = np.zeros((16, 16), np.uint8)
  mask[top:top + 6, 3:9] = 255
  return mask


def _seg_folder(root, n=6):
  """images/*.png + masks/*.bmp (BMP: an edited mask keeps its file size)."""
  (root / 'images').mkdir(parents=True)
  (root / 'masks').mkdir()
  for i in range(n):
    Image.fromarray(_rgb(seed=i)).save(root / 'images' / f's{i}.png')
    Image.fromarray(_blob_mask(2)).save(root / 'masks' / f's{i}.bmp')
  return root


def _seg_config(root):
  from configs import warwick_unet  # pylint: disable=g-import-not-at-top
  return warwick_unet.get_config(f'root={root},classes=2')


def _stored(source):
  return [source[i] for i in range(len(source))]


def _edit_keeping_size_and_mtime(path, write):
  """Rewrites `path` with the same size and mtime: only a content hash can see the edit."""
  stat = path.stat()
  write()
  assert path.stat().st_size == stat.st_size
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


# ---- 1. the cache fingerprint covers every input, by content ----------------------------------

def test_cache_rebuilds_when_a_mask_is_edited(tmp_path, cache):
  from histojax.data import datasets  # pylint: disable=g-import-not-at-top
  root = _seg_folder(tmp_path / 'seg')
  before = _stored(datasets.get_splits(_seg_config(root)).train.source)
  mask = root / 'masks' / 's0.bmp'
  _edit_keeping_size_and_mtime(mask, lambda: Image.fromarray(_blob_mask(9)).save(mask))
  after = _stored(datasets.get_splits(_seg_config(root)).train.source)
  assert len(list(cache.iterdir())) == 2  # a new build next to the stale one
  changed = [i for i, (a, b) in enumerate(zip(before, after))
             if not np.array_equal(a['mask'], b['mask'])]
  assert len(changed) == 1
  assert np.array_equal(after[changed[0]]['mask'], _blob_mask(9) // 255)


def test_cache_rebuilds_when_csv_labels_are_swapped(tmp_path, cache):
  from configs import nuclei_cnn  # pylint: disable=g-import-not-at-top
  from histojax.data import datasets  # pylint: disable=g-import-not-at-top
  (tmp_path / 'im').mkdir()
  csv_path = tmp_path / 'labels.csv'

  def write_csv(swap=False):
    labels = ['a', 'b'] * 6
    if swap:
      labels[:2] = ['b', 'a']
    csv_path.write_text('filename,label\n' + ''.join(f'{i:02d}.png,{label}\n'
                                                     for i, label in enumerate(labels)))
  for i in range(12):
    Image.fromarray(_rgb(8, 8, seed=i)).save(tmp_path / 'im' / f'{i:02d}.png')
  write_csv()

  def labels():
    config = nuclei_cnn.get_config(f'csv={csv_path},images={tmp_path / "im"}')
    config.data.patch_size = 8
    return [int(e['label']) for e in _stored(datasets.get_splits(config).train.source)]
  before = labels()
  _edit_keeping_size_and_mtime(csv_path, lambda: write_csv(swap=True))
  after = labels()
  assert before[:2] == [0, 1] and after[:2] == [1, 0] and before[2:] == after[2:]


def test_fingerprint_covers_glas_masks_grades_and_crchisto_mats(tmp_path):
  from configs import warwick_unet  # pylint: disable=g-import-not-at-top
  from histojax.data.sources import glas  # pylint: disable=g-import-not-at-top
  config = warwick_unet.get_config()
  root = _glas_fixture(tmp_path / 'glas')

  def key():
    return build.fingerprint(config, build.input_files(glas.records(root=root)))
  first = key()
  mask = root / 'testA_1_anno.png'
  empty = np.zeros_like(np.asarray(Image.open(mask)))
  stat = mask.stat()
  Image.fromarray(empty).save(mask)  # an emptied test mask (size changes; mtime kept)
  os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  second = key()
  assert second != first
  grades = root / 'Grade.csv'
  _edit_keeping_size_and_mtime(grades, lambda: grades.write_bytes(
      grades.read_bytes().replace(b'testA_1,2', b'testA_1,3')))  # another patient
  assert key() != second

  config.dataset = 'crchisto_points'
  crc = _crc_fixture(tmp_path / 'crc')
  first = build.fingerprint(config, build.input_files(crchisto.records(root=crc)))
  mat = crc / 'img1' / 'img1_others.mat'
  scipy.io.savemat(mat, {'detection': np.array([[2.0, 2.0]])})  # was [[1, 1]]: same size
  second = build.fingerprint(config, build.input_files(crchisto.records(root=crc)))
  assert second != first and str(mat) in json.dumps(second)


# ---- 2. a lost or torn cache side file is rebuilt, not a KeyError forever ---------------------

@pytest.mark.parametrize('damage', ['missing', 'torn', 'no_split'])
def test_lost_cache_meta_file_rebuilds(tmp_path, cache, caplog, damage):
  from histojax.data import datasets  # pylint: disable=g-import-not-at-top
  root = _seg_folder(tmp_path / 'seg', n=4)
  config = _seg_config(root)
  config.data.fractions = dict(train=0.5, val=0.25, test=0.25)
  before = _stored(datasets.get_splits(config).train.source)
  (folder,) = cache.iterdir()
  meta = folder / 'histojax_meta.json'
  if damage == 'missing':
    meta.unlink()
  else:
    meta.write_text('{"examp' if damage == 'torn' else '{}')
  with caplog.at_level(logging.WARNING):
    after = _stored(datasets.get_splits(config).train.source)
  assert f'Cached dataset {folder}' in caplog.text and 'rebuilding' in caplog.text
  assert json.loads(meta.read_text())['examples']
  assert [np.array_equal(a['image'], b['image']) for a, b in zip(before, after)] == \
      [True] * len(before)
  assert not list(folder.glob('.*tmp'))  # the atomic write left no temporary file


# ---- 3. 16-bit RGB is refused, 16-bit label masks are not ------------------------------------

def _png16(path, array, colour_type):
  """A 16-bit PNG written by hand (PIL cannot write 16-bit RGB): IHDR bit depth 16."""
  h, w = array.shape[:2]
  raw = b''.join(b'\x00' + array[r].astype('>u2').tobytes() for r in range(h))

  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))
  path.write_bytes(b'\x89PNG\r\n\x1a\n' +
                   chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, colour_type, 0, 0, 0)) +
                   chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
  return path


def _tiff16_rgb(path, array):
  """An uncompressed 16-bit RGB TIFF (BitsPerSample 16,16,16), written by hand."""
  h, w = array.shape[:2]
  pixels = array.astype('<u2').tobytes()
  tags = [(256, w), (257, h), (258, None), (259, 1), (262, 2), (273, None), (277, 3),
          (278, h), (279, len(pixels)), (284, 1)]
  bps_at = 8 + 2 + 12 * len(tags) + 4
  out = b'II*\x00' + struct.pack('<IH', 8, len(tags))
  for tag, value in tags:
    if tag == 258:
      out += struct.pack('<HHII', tag, 3, 3, bps_at)
    elif tag in (273, 279):
      out += struct.pack('<HHII', tag, 4, 1, bps_at + 6 if tag == 273 else value)
    else:
      out += struct.pack('<HHIHH', tag, 3, 1, value, 0)
  path.write_bytes(out + struct.pack('<I', 0) + struct.pack('<HHH', 16, 16, 16) + pixels)
  return path


def test_16bit_rgb_refused_on_header_and_decode(tmp_path):
  scan = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 60).astype(np.uint16)  # 12-bit values
  png = _png16(tmp_path / 'scan.png', scan, colour_type=2)
  tif = _tiff16_rgb(tmp_path / 'scan.tif', scan)
  for path in (png, tif):
    with Image.open(path) as im:  # what made it slip through: PIL keeps the high byte only
      assert im.mode == 'RGB' and np.asarray(im).max() == scan.max() >> 8
    with pytest.raises(paths.DataError, match=f'{path.name} has 16 bits per channel.*8-bit'):
      common.image_header(path)
    with pytest.raises(paths.DataError, match=f'{path.name} has 16 bits.*real bit depth'):
      common.read_rgb(path)
  with pytest.raises(paths.DataError, match='scan.png has 16 bits'):
    common.read_gray(png)
  gray = _png16(tmp_path / 'gray.png', scan[..., 0], colour_type=0)
  with pytest.raises(paths.DataError, match="gray.png has PIL mode 'I;16'.*real bit depth"):
    common.read_gray(gray)
  # The bring-your-own listing (header path) refuses it too.
  root = tmp_path / 'seg'
  (root / 'images').mkdir(parents=True)
  (root / 'masks').mkdir()
  _png16(root / 'images' / 'a.png', scan, colour_type=2)
  Image.fromarray(np.zeros((4, 5), np.uint8)).save(root / 'masks' / 'a.png')
  with pytest.raises(paths.DataError, match='a.png has 16 bits'):
    folders.segmentation(root)


def test_16bit_gray_label_masks_still_accepted(tmp_path):
  labels = np.array([[0, 1, 300], [2, 0, 1000]], np.uint16)
  Image.fromarray(labels).save(tmp_path / 'pil.png')
  assert Image.open(tmp_path / 'pil.png').mode == 'I;16'
  _png16(tmp_path / 'hand.png', labels, colour_type=0)
  for name in ('pil.png', 'hand.png'):
    assert common.image_header(tmp_path / name)[0] == (2, 3)
    np.testing.assert_array_equal(common.read_label_mask(tmp_path / name), labels)


# ---- 4. hidden files (macOS ._* and .DS_Store) are ignored ------------------------------------

def _macos_litter(folder):
  (folder / '._a.png').write_bytes(b'\x00\x05\x16\x07 Mac OS X resource fork')
  (folder / '.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1')


def test_dot_files_are_ignored_in_every_listing(tmp_path):
  root = _seg_folder(tmp_path / 'seg', n=2)
  _macos_litter(root / 'images')
  _macos_litter(root / 'masks')
  assert [r.name for r in folders.segmentation(root)] == ['s0', 's1']

  for cls in ('a', 'b'):
    (tmp_path / 'cls' / cls).mkdir(parents=True)
    Image.fromarray(_rgb()).save(tmp_path / 'cls' / cls / 'x.png')
    _macos_litter(tmp_path / 'cls' / cls)
  (tmp_path / 'cls' / '.Trashes').mkdir()
  records, names = folders.class_folders(tmp_path / 'cls')
  assert names == ['a', 'b'] and len(records) == 2

  _macos_litter(root / 'images')
  (tmp_path / 'l.csv').write_text('filename,label\ns0.png,a\ns1,b\n')
  records, _ = folders.csv_labels(tmp_path / 'l.csv', root / 'images')
  assert [r.name for r in records] == ['s0', 's1']

  gt = {'c1': {'mitosis': [{'x': 0.5, 'y': 0.5}]}}
  (tmp_path / 'br' / 'images').mkdir(parents=True)
  (tmp_path / 'br' / 'groundTruth').mkdir()
  Image.fromarray(_rgb()).save(tmp_path / 'br' / 'images' / 'c1.png')
  (tmp_path / 'br' / 'groundTruth' / 'c1.json').write_text(json.dumps(gt['c1']))
  _macos_litter(tmp_path / 'br' / 'images')
  (tmp_path / 'br' / 'groundTruth' / '._c1.json').write_bytes(b'\x00\x05\x16\x07')
  recs = brecahad.records(root=tmp_path / 'br')
  assert [r.name for r in recs] == ['c1'] and not any('without an image' in n for n in recs.notes)


# ---- 5. CSV label typos are not new classes ---------------------------------------------------

def _labelled(tmp_path, labels):
  (tmp_path / 'im').mkdir(exist_ok=True)
  rows = ['filename,label']
  for i, label in enumerate(labels):
    Image.fromarray(_rgb(4, 4, seed=i)).save(tmp_path / 'im' / f'{i}.png')
    rows.append(f'{i}.png,{label}')
  (tmp_path / 'l.csv').write_text('\n'.join(rows) + '\n')
  return tmp_path / 'l.csv', tmp_path / 'im'


def test_csv_label_outside_data_classes_is_an_error(tmp_path):
  csv_path, images = _labelled(tmp_path, ['benign', 'malignant', 'benign', 'benignn'])
  with pytest.raises(paths.DataError, match=r"l.csv line 5: unknown class name 'benignn'.*"
                                            r"data.classes allows \['benign', 'malignant'\]"):
    folders.csv_labels(csv_path, images, classes=('benign', 'malignant'))
  # Through the config argument, and through a --config.data.classes override.
  from configs import nuclei_cnn, nuclei_resnet18  # pylint: disable=g-import-not-at-top
  from histojax.data import datasets  # pylint: disable=g-import-not-at-top
  arg = f'csv={csv_path},images={images},classes=benign+malignant'
  for config in (nuclei_cnn.get_config(arg), nuclei_resnet18.get_config(arg)):
    assert config.data.classes == ('benign', 'malignant')
    with pytest.raises(paths.DataError, match="line 5: unknown class name 'benignn'"):
      datasets.get_splits(config)
  with pytest.raises(ValueError, match='classes=... is for the CSV layout'):
    nuclei_cnn.get_config('classes=a+b')
  config = nuclei_cnn.get_config(f'csv={csv_path},images={images}')
  config.data.classes = ('benign,malignant',)  # what --config.data.classes=benign,malignant gives
  with pytest.raises(paths.DataError, match="unknown class name 'benignn'"):
    datasets.get_splits(config)


@pytest.mark.parametrize('name', ['mnist_cnn', 'warwick_unet', 'crchisto_types_unet',
                                  'nuclei_cnn', 'patches_cnn'])
def test_data_classes_is_settable_on_every_config(name):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  argv = ['prog', f'--config=configs/{name}.py', '--config.data.classes=("A", "B")']
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  assert values.config.data.classes == ('A', 'B')


def test_inferred_csv_classes_are_logged_and_a_rare_one_flagged(tmp_path, caplog):
  csv_path, images = _labelled(tmp_path, ['benign'] * 30 + ['malignant'] * 29 + ['Benign'])
  with caplog.at_level(logging.WARNING):
    _, names = folders.csv_labels(csv_path, images)
  assert names == ['Benign', 'benign', 'malignant']
  assert "'benign' (30 rows)" in caplog.text and "'malignant' (29 rows)" in caplog.text
  assert "class 'Benign' has only 1 of 60 rows (first at line 61)" in caplog.text
  assert 'typo' in caplog.text and 'data.classes' in caplog.text
  assert "class 'malignant'" not in caplog.text


# ---- 6. malformed inputs: one DataError naming the file ---------------------------------------

def test_malformed_mat_files_name_the_file(tmp_path):
  path = tmp_path / 'img1_detection.mat'
  cases = [(b'', 'Cannot read .mat'), (b'not a MAT file at all' * 8, 'Cannot read .mat'),
           (b'MATLAB 7.3 MAT-file' + b' ' * 97 + b'\x00' * 8 + b'\x00\x02IM', 'Cannot read')]
  for content, message in cases:
    path.write_bytes(content)
    with pytest.raises(paths.DataError, match=f'{message}.*img1_detection.mat'):
      crchisto.read_points(path)
  for value, message in [({'a': 1}, 'not a numeric array'), ('text', 'not a numeric array'),
                         (np.ones((2, 2, 2)), 'expected an N x 2')]:
    scipy.io.savemat(path, {'detection': value})
    with pytest.raises(paths.DataError, match=f'img1_detection.mat.*{message}'):
      crchisto.read_points(path)
  scipy.io.savemat(path, {'a': np.ones((1, 2)), 'b': np.ones((1, 2))})
  with pytest.raises(paths.DataError, match="img1_detection.mat has variables.*'detection'"):
    crchisto.read_points(path)


def test_malformed_json_names_the_file(tmp_path):
  path = tmp_path / 'c1.json'
  cases = [('', 'Cannot read'), ('[' * 100000 + ']' * 100000, 'Cannot read'),
           ('[1, 2]', 'expected a JSON object'), ('{"mitosis": {"x": 1}}', 'not a list'),
           ('{"mitosis": [[0.1, 0.2]]}', 'bad point'),
           ('{"mitosis": [{"x": true, "y": 0.1}]}', 'bad point'),
           ('{"mitosis": [{"x": 0.1}]}', 'bad point')]
  for content, message in cases:
    path.write_text(content)
    with pytest.raises(paths.DataError, match=f'(c1.json.*{message}|{message}.*c1.json)'):
      brecahad.read_json(path, 10, 10)
  path.write_bytes(b'\xff\xfe\x00 not utf-8')
  with pytest.raises(paths.DataError, match='Cannot read BreCaHAD annotation .*c1.json'):
    brecahad.read_json(path, 10, 10)


def test_malformed_csv_names_the_file(tmp_path):
  (tmp_path / 'im').mkdir()
  path = tmp_path / 'l.csv'
  cases = [(b'', 'l.csv is empty'), (b'\n \n', 'l.csv is empty'),
           (b'filename,label\n', 'l.csv has a header but no rows'),
           (b'filename,class\na.png,x\n', r"l.csv has header \['filename', 'class'\]"),
           (b'id,label\na.png,x\n', 'l.csv has header'),
           (b'a.png\nb.png\n', 'l.csv line 1 is malformed'),
           (b'filename,label\na.png,x\na.png,y\n', "l.csv line 3 lists 'a.png' a second"),
           (b'\xff\xfe\xfa garbage', 'Cannot read label file .*l.csv')]
  for content, message in cases:
    path.write_bytes(content)
    with pytest.raises(paths.DataError, match=message):
      folders.csv_labels(path, tmp_path / 'im')


def test_empty_folders_and_non_images_name_the_folder_or_file(tmp_path):
  (tmp_path / 'seg' / 'images').mkdir(parents=True)
  (tmp_path / 'seg' / 'masks').mkdir()
  with pytest.raises(paths.DataError, match='No images in .*seg/images'):
    folders.segmentation(tmp_path / 'seg')
  (tmp_path / 'cls' / 'a').mkdir(parents=True)
  (tmp_path / 'cls' / 'b').mkdir()
  Image.fromarray(_rgb()).save(tmp_path / 'cls' / 'a' / 'x.png')
  with pytest.raises(paths.DataError, match='Class folder .*cls/b holds no images'):
    folders.class_folders(tmp_path / 'cls')
  with pytest.raises(paths.DataError, match='No CRCHisto image folders .* in .*cls'):
    crchisto.records(root=tmp_path / 'cls')
  fake = tmp_path / 'fake.png'
  for content in (b'', b'plain text, not a PNG', b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00'):
    fake.write_bytes(content)
    with pytest.raises(paths.DataError, match='Cannot read image .*fake.png'):
      common.image_header(fake)
    with pytest.raises(paths.DataError, match='Cannot read image .*fake.png'):
      common.read_rgb(fake)
  Image.fromarray(_rgb(40, 40)).save(fake)
  fake.write_bytes(fake.read_bytes()[:80])  # truncated pixel data: found when decoding
  with pytest.raises(paths.DataError, match='Cannot decode image .*fake.png'):
    common.read_rgb(fake)
