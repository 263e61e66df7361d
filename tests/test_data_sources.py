"""Dataset readers: counts and alignment on real data (HISTOJAX_DATA), errors on fixtures."""
import json

import numpy as np
import pytest
import scipy.io
from PIL import Image

from conftest import crc_records, glas_records, require_data
from histojax.data import paths
from histojax.data.sources import brecahad, common, crchisto, folders, glas


_glas, _crc = glas_records, crc_records


def _png(path, array, mode=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8), mode).save(path)
  return path


def _rgb(h=20, w=30, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---- GlaS (real data) ------------------------------------------------------------------------

def test_glas_counts_patients_grades():
  require_data('glas')
  recs = _glas()
  assert [sum(r.split == s for r in recs) for s in glas.SPLITS] == [85, 60, 20]
  assert not recs.skipped
  assert all(r.patient for r in recs)
  assert len({r.patient for r in recs}) == 16
  grades = {s: [sum(r.split == s and r.grade == g for r in recs) for g in glas.GRADES]
            for s in glas.SPLITS}
  assert grades == {'train': [37, 48], 'testA': [33, 27], 'testB': [4, 16]}
  assert [r.name for r in glas.records('testB')][:2] == ['testB_1', 'testB_2']


def test_glas_image_mask_aligned():
  require_data('glas')
  for split in glas.SPLITS:
    r = next(r for r in _glas() if r.split == split)
    image, mask = glas.load_image(r), glas.load_mask(r)
    assert image.dtype == np.uint8 and image.shape == (r.height, r.width, 3)
    assert mask.shape == image.shape[:2]
    assert mask.max() >= 2  # several glands: objects from connected components
    binary = glas.load_mask(r, instances=False)
    assert set(np.unique(binary)) == {0, 1}
    np.testing.assert_array_equal(binary, mask > 0)


def test_glas_notes_binary_masks_and_patient_overlap():
  require_data('glas')
  notes = glas.dataset_notes(_glas())
  assert any('binary for 165 of 165' in n and 'connected components' in n for n in notes)
  assert any('not patient-disjoint' in n and '11 of 16' in n for n in notes)


# ---- CRCHistoPhenotypes (real data) ----------------------------------------------------------

def test_crchisto_counts_and_quirks():
  require_data('crchistophenotypes')
  s = crchisto.summary(_crc())
  assert (s['images'], s['detected'], s['typed']) == (100, 29756, 22444)
  assert s['per_class'] == {'epithelial': 7722, 'inflammatory': 6971, 'fibroblast': 5712,
                            'others': 2039}
  assert s['empty_class_files'] == 68
  assert s['typed_not_in_detection'] == 82
  assert s['multi_class_points'] == 3
  assert s['duplicate_detections'] == 8
  assert s['nuclei'] == 29756 - 8 + 82
  assert s['clamped_points'] > 0
  assert any('82 typed points' in n for n in _crc().notes)


def test_crchisto_coordinates_are_zero_based_xy_on_nuclei():
  require_data('crchistophenotypes')
  for r in _crc():
    for pts in (r.detected, r.typed):
      assert pts.min() >= 0
      assert np.all(pts[:, 0] <= r.width - 1) and np.all(pts[:, 1] <= r.height - 1)
  r = _crc()[0]
  gray = crchisto.load_image(r).mean(axis=-1)
  col, row = np.round(r.detected).astype(int).T  # (x, y) = (column, row)
  assert gray[row, col].mean() < gray.mean() - 30  # centres sit on dark nuclei
  points, labels, _ = crchisto.nuclei(r)
  assert len(points) == len(labels) and labels.max() < len(crchisto.CLASSES)


def test_crchisto_conflicting_classes_resolved_in_class_order():
  require_data('crchistophenotypes')
  r = next(r for r in _crc() if r.name == 'img8')  # epithelial + others at one point
  points, labels, stats = crchisto.nuclei(r)
  assert stats['conflicting_class_points'] == 1
  i = np.flatnonzero(np.all(np.abs(points - (42.937 - 1, 330.024 - 1)) < 1e-2, axis=1))
  assert len(i) == 1 and set(labels[i]) == {crchisto.CLASSES.index('epithelial')}


# ---- small fixtures: GlaS and CRCHisto layout errors -----------------------------------------

def _glas_fixture(root, names=('train_1', 'testA_1'), grades=None):
  rows = ['name,patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)']
  for k, name in enumerate(names):
    _png(root / f'{name}.png', _rgb(seed=k))
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 2:8] = mask[12:18, 10:20] = 255
    _png(root / f'{name}_anno.png', mask)
    rows.append(f'{name},{k + 1}, {(grades or {}).get(name, "benign")}, healthy')
  (root / 'Grade.csv').write_text('\r\n'.join(rows))
  return root


def test_glas_fixture_reads_and_labels_components(tmp_path):
  recs = glas.records(root=_glas_fixture(tmp_path))
  assert [(r.name, r.split, r.patient) for r in recs] == [('train_1', 'train', '1'),
                                                          ('testA_1', 'testA', '2')]
  assert glas.load_mask(recs[0]).max() == 2


def test_glas_errors(tmp_path):
  root = _glas_fixture(tmp_path / 'a')
  (root / 'testA_1_anno.png').unlink()
  with pytest.raises(paths.DataError, match='testA_1.png has no mask'):
    glas.records(root=root)
  with pytest.warns(UserWarning, match='skipped 1'):
    recs = glas.records(root=root, skip_bad=True)
  assert len(recs) == 1 and len(recs.skipped) == 1

  root = _glas_fixture(tmp_path / 'b')
  _png(root / 'train_1_anno.png', np.zeros((21, 30), np.uint8))
  with pytest.raises(paths.DataError, match='train_1_anno.png is 30x21'):
    glas.records(root=root)

  root = _glas_fixture(tmp_path / 'c', grades={'train_1': 'borderline'})
  with pytest.raises(paths.DataError, match="unknown grade 'borderline'"):
    glas.records(root=root)

  root = _glas_fixture(tmp_path / 'd')
  (root / 'Grade.csv').write_text('foo;bar\n1;2\n')
  with pytest.raises(paths.DataError, match='Grade.csv has header'):
    glas.records(root=root)

  root = _glas_fixture(tmp_path / 'e')
  _png(root / 'train_1.png', _rgb()[..., 0])
  with pytest.raises(paths.DataError, match='train_1.png is grayscale'):
    glas.records(root=root)


def _crc_fixture(root, classes=None):
  folder = root / 'img1'
  _png(folder / 'img1.png', _rgb(50, 40))
  det = np.array([[1.0, 1.0], [40.0, 50.0], [20.5, 10.25], [0.4, 3.0]])
  scipy.io.savemat(folder / 'img1_detection.mat', {'detection': det})
  classes = classes or {'epithelial': det[:2], 'inflammatory': np.zeros((0, 2)),
                        'fibroblast': np.array([[20.5, 10.25], [30.0, 30.0]]),
                        'others': np.array([[1.0, 1.0]])}
  for name, pts in classes.items():
    scipy.io.savemat(folder / f'img1_{name}.mat', {'detection': pts})
  return root


def test_crchisto_fixture(tmp_path):
  recs = crchisto.records(root=_crc_fixture(tmp_path))
  r = recs[0]
  np.testing.assert_allclose(r.detected, [[0, 0], [39, 49], [19.5, 9.25], [0, 2]])
  assert r.clamped == 1 and r.empty_class_files == 1
  points, labels, stats = crchisto.nuclei(r)
  assert stats == {'typed_not_in_detection': 1, 'multi_class_points': 1,
                   'conflicting_class_points': 1, 'duplicate_detections': 0}
  assert labels.tolist() == [0, 0, 2, -1, 2]  # (1,1): epithelial beats others; extra appended
  np.testing.assert_allclose(points[-1], [29, 29])


def test_crchisto_bad_mat(tmp_path):
  root = _crc_fixture(tmp_path)
  bad = root / 'img1' / 'img1_others.mat'
  bad.write_bytes(b'MATLAB 5.0 MAT-file, this is not really one')
  with pytest.raises(paths.DataError, match='img1_others.mat'):
    crchisto.records(root=root)
  scipy.io.savemat(bad, {'detection': np.ones((3, 3))})
  with pytest.raises(paths.DataError, match=r'img1_others.mat: expected an N x 2'):
    crchisto.records(root=root)
  (root / 'img1' / 'img1_others.mat').unlink()
  with pytest.warns(UserWarning, match='skipped 1'):
    recs = crchisto.records(root=root, skip_bad=True)
  assert len(recs) == 0 and 'img1_others.mat is missing' in recs.skipped[0]


# ---- BreCaHAD (fixture only; real release not available) -------------------------------------

def _brecahad_fixture(root, gt):
  for name, content in gt.items():
    img = Image.fromarray(_rgb(100, 200))
    (root / 'images').mkdir(parents=True, exist_ok=True)
    img.save(root / 'images' / f'{name}.tif')
    (root / 'groundTruth').mkdir(exist_ok=True)
    (root / 'groundTruth' / f'{name}.json').write_text(
        content if isinstance(content, str) else json.dumps(content))
  return root


def test_brecahad_fixture_and_key_spelling(tmp_path):
  root = _brecahad_fixture(tmp_path, {
      'Case_1-01': {'mitosis': [{'x': 0.5, 'y': 0.25}], 'Non-Tumor': [{'x': 1.0, 'y': 1.0}],
                    'nontumor': [], 'tumor': [{'x': 0.1, 'y': 0.2}, {'x': 0.0, 'y': 0.0}],
                    'lumen': [], 'apoptosis': []},
      'Case_2-01': {'non_tumor': [{'x': 0.25, 'y': 0.5}]}})
  recs = brecahad.records(root=root)
  assert [r.name for r in recs] == ['Case_1-01', 'Case_2-01']
  r = recs[0]
  assert (r.height, r.width) == (100, 200) and r.group == 'Case_1'
  np.testing.assert_allclose(r.points, [[100, 25], [199, 99], [20, 20], [0, 0]])
  assert [brecahad.CLASSES[k] for k in r.labels] == ['mitosis', 'non_tumor', 'tumor', 'tumor']
  assert brecahad.load_image(r).shape == (100, 200, 3)
  assert any('untested on the real release' in n for n in recs.notes)


def test_brecahad_errors(tmp_path):
  root = _brecahad_fixture(tmp_path / 'a', {'c1': {'stroma': [{'x': 0.1, 'y': 0.1}]}})
  with pytest.raises(paths.DataError, match="c1.json: unknown category 'stroma'"):
    brecahad.records(root=root)
  root = _brecahad_fixture(tmp_path / 'b', {'c1': '{"mitosis": [{"x": 0.1', 'c2': {}})
  with pytest.raises(paths.DataError, match='c1.json'):
    brecahad.records(root=root)
  with pytest.warns(UserWarning, match='skipped 1'):
    assert [r.name for r in brecahad.records(root=root, skip_bad=True)] == ['c2']
  root = _brecahad_fixture(tmp_path / 'c', {'c1': {'mitosis': [{'x': 12, 'y': 0.1}]}})
  with pytest.raises(paths.DataError, match='not normalised'):
    brecahad.records(root=root)
  (root / 'groundTruth' / 'c1.json').unlink()
  with pytest.raises(paths.DataError, match='c1.tif has no annotation'):
    brecahad.records(root=root)


# ---- bring-your-own folders ------------------------------------------------------------------

def test_segmentation_folder_mask_kinds(tmp_path):
  mask = np.zeros((20, 30), np.uint8)
  mask[5:10, 5:10] = 255
  _png(tmp_path / 'images' / 'a.png', _rgb())
  _png(tmp_path / 'masks' / 'a.png', mask)
  _png(tmp_path / 'images' / 'b.jpg', _rgb(seed=1))
  _png(tmp_path / 'masks' / 'b.png', (mask > 0) * 3)  # label-valued
  _png(tmp_path / 'images' / 'c.png', _rgb(seed=2))
  palette = Image.fromarray((mask > 0).astype(np.uint8) * 2, 'P')
  palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
  palette.save(tmp_path / 'masks' / 'c.png')
  recs = folders.segmentation(tmp_path)
  assert [r.name for r in recs] == ['a', 'b', 'c']
  assert [int(folders.load_mask(r).max()) for r in recs] == [1, 3, 2]
  assert folders.load_image(recs[1]).shape == (20, 30, 3)


def test_segmentation_folder_errors(tmp_path):
  _png(tmp_path / 'images' / 'a.png', _rgb())
  _png(tmp_path / 'images' / 'b.png', _rgb())
  _png(tmp_path / 'masks' / 'a.png', np.zeros((20, 30), np.uint8))
  with pytest.raises(paths.DataError, match='b.png has no mask'):
    folders.segmentation(tmp_path)
  with pytest.warns(UserWarning, match='skipped 1'):
    recs = folders.segmentation(tmp_path, skip_bad=True)
  assert [r.name for r in recs] == ['a'] and len(recs.skipped) == 1
  _png(tmp_path / 'masks' / 'b.png', np.zeros((30, 20), np.uint8))
  with pytest.raises(paths.DataError, match='b.png is 20x30 but its image'):
    folders.segmentation(tmp_path)
  _png(tmp_path / 'masks' / 'b.png', np.zeros((20, 30, 3), np.uint8) + [255, 0, 0])
  recs = folders.segmentation(tmp_path)  # the header is fine; the values decide
  with pytest.raises(paths.DataError, match='b.png is a colour RGB image'):
    folders.load_mask(recs[1])


def test_bad_images_named(tmp_path):
  good = _png(tmp_path / 'good.png', _rgb(64, 64))
  truncated = tmp_path / 'truncated.png'
  truncated.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
  with pytest.raises(paths.DataError, match='truncated.png'):
    common.read_rgb(truncated)
  (tmp_path / 'junk.png').write_bytes(b'not an image')
  with pytest.raises(paths.DataError, match='junk.png'):
    common.read_rgb(tmp_path / 'junk.png')
  rgba = _png(tmp_path / 'rgba.png', np.zeros((4, 4, 4)), 'RGBA')
  with pytest.raises(paths.DataError, match='rgba.png is RGBA'):
    common.read_rgb(rgba)
  gray = _png(tmp_path / 'gray.png', np.zeros((4, 4)))
  with pytest.raises(paths.DataError, match='gray.png is grayscale'):
    common.read_rgb(gray)


def test_class_folders(tmp_path):
  _png(tmp_path / 'tumour' / 'x1.png', _rgb())
  _png(tmp_path / 'tumour' / 'x2.png', _rgb())
  _png(tmp_path / 'normal' / 'y1.png', _rgb())
  _png(tmp_path / 'normal' / 'y2.png', _rgb()[..., 0])  # grayscale: refused
  with pytest.raises(paths.DataError, match='y2.png is grayscale'):
    folders.class_folders(tmp_path)
  with pytest.warns(UserWarning, match='skipped 1'):
    recs, classes = folders.class_folders(tmp_path, skip_bad=True)
  assert classes == ['normal', 'tumour']
  assert [(r.name, r.label) for r in recs] == [('y1', 0), ('x1', 1), ('x2', 1)]
  with pytest.raises(paths.DataError, match=r"no sub-folder for class\(es\) \['tumor'\]"):
    folders.class_folders(tmp_path, classes=['normal', 'tumor'], skip_bad=True)
  recs, classes = folders.class_folders(tmp_path, classes=['tumour'])  # a subset, in order
  assert classes == ['tumour'] and [r.name for r in recs] == ['x1', 'x2']


def test_csv_labels(tmp_path):
  for name in ('a', 'b', 'c'):
    _png(tmp_path / 'img' / f'{name}.png', _rgb())
  (tmp_path / 'labels.csv').write_text('filename,label\na.png,benign\nb,malignant\nc.png,benign\n')
  recs, classes = folders.csv_labels(tmp_path / 'labels.csv', tmp_path / 'img')
  assert classes == ['benign', 'malignant']
  assert [(r.name, r.label) for r in recs] == [('a', 0), ('b', 1), ('c', 0)]
  (tmp_path / 'bad.csv').write_text('filename,label\na.png\n')
  with pytest.raises(paths.DataError, match='bad.csv line 2 is malformed'):
    folders.csv_labels(tmp_path / 'bad.csv', tmp_path / 'img')
  (tmp_path / 'unk.csv').write_text('filename,label\na.png,stroma\n')
  with pytest.raises(paths.DataError, match="unknown class name.*stroma"):
    folders.csv_labels(tmp_path / 'unk.csv', tmp_path / 'img', classes=['benign', 'malignant'])
  (tmp_path / 'missing.csv').write_text('filename,label\nzzz.png,benign\n')
  with pytest.raises(paths.DataError, match="lists 'zzz.png'"):
    folders.csv_labels(tmp_path / 'missing.csv', tmp_path / 'img')
