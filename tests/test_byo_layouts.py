"""Bring-your-own segmentation data as public sets ship it: a fixed train/ + test/ split, and
polygon annotations (QuPath GeoJSON, Aperio ImageScope XML) instead of masks."""
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import shapely
from PIL import Image

from conftest import glas_records, require_data
from histojax import export
from histojax.data import datasets, paths
from histojax.data.sources import annotations, folders


def _glas(n):
  require_data('glas')
  out = []
  for r in glas_records()[:n]:
    image = np.asarray(Image.open(r.image_path).convert('RGB'))[:200, :240]
    mask = (np.asarray(Image.open(r.mask_path))[:200, :240] > 0).astype(np.uint8)
    out.append((r.name, image, mask))
  return out


def _qupath(mask, names):
  """QuPath's export: one feature per component, classified by the label's name."""
  features = []
  for k, name in names.items():
    for geom in export.mask_polygons(mask == k):
      features.append({'type': 'Feature', 'geometry': shapely.geometry.mapping(geom),
                       'properties': {'objectType': 'annotation',
                                      'classification': {'name': name}}})
  return {'type': 'FeatureCollection', 'features': features}


def _imagescope(mask, name):
  """ImageScope's XML: each component's outline a region, its holes negative regions."""
  root = ET.Element('Annotations')
  regions = ET.SubElement(ET.SubElement(root, 'Annotation', Name=name), 'Regions')
  for geom in export.mask_polygons(mask > 0):
    for polygon in getattr(geom, 'geoms', [geom]):
      rings = [(polygon.exterior, '0')] + [(r, '1') for r in polygon.interiors]
      for ring, negative in rings:
        region = ET.SubElement(regions, 'Region', NegativeROA=negative)
        vertices = ET.SubElement(region, 'Vertices')
        for x, y in ring.coords[:-1]:
          ET.SubElement(vertices, 'Vertex', X=str(x), Y=str(y))
  return ET.tostring(root)


def test_annotations_rasterise_back_to_the_masks_they_came_from(tmp_path):
  (_, _, mask), = _glas(1)
  two = mask.astype(np.int32)
  two[:, 120:] *= 2  # a second class on the right half
  path = tmp_path / 'a.geojson'
  path.write_text(json.dumps(_qupath(two, {1: 'Gland', 2: 'Tumor'})))
  labels, instances = annotations.load(path, two.shape, classes=('gland', 'tumor'))
  assert np.array_equal(labels, two)
  assert len(np.unique(instances)) - 1 == len(_qupath(two, {1: 'a', 2: 'b'})['features'])
  with pytest.raises(paths.DataError, match=r"a.geojson: region \d+ has class 'Tumor'"):
    annotations.load(path, two.shape, classes=('gland',))
  xml = tmp_path / 'a.xml'
  xml.write_bytes(_imagescope(mask, 'gland'))
  labels, _ = annotations.load(xml, mask.shape)
  assert np.array_equal(labels, mask)  # holes cut by the negative regions
  (tmp_path / 'bad.xml').write_text('<Annotations><Annotation')
  with pytest.raises(paths.DataError, match='bad.xml is unreadable'):
    annotations.load(tmp_path / 'bad.xml', mask.shape)


def test_a_fixed_train_test_split_with_annotations_trains_on_train_only(tmp_path):
  from configs import warwick_unet
  examples = _glas(8)
  root = tmp_path / 'byo'
  for i, (name, image, mask) in enumerate(examples):
    part = root / ('test' if i >= 6 else 'train')
    (part / 'images').mkdir(parents=True, exist_ok=True)
    (part / 'annotations').mkdir(exist_ok=True)
    Image.fromarray(image).save(part / 'images' / f'{name}.png')
    (part / 'annotations' / f'{name}.geojson').write_text(
        json.dumps(_qupath(mask, {1: 'gland'})))
  config = warwick_unet.get_config(f'root={root},classes=2')
  config.data.classes = ('gland',)
  splits = datasets.get_splits(config)
  assert splits.info['class_names'] == ['background', 'gland']
  test = splits.tests['test']
  assert len(test) == 2 and len(splits.train) + len(splits.val) == 6 and len(splits.val) >= 1
  masks = {n: m for n, _, m in examples}
  for i in range(len(test)):
    example = test[i]
    # Binary + polygons: the masks are instance maps, one object per polygon.
    assert any(np.array_equal(example['mask'] > 0, masks[n] > 0) for n, *_ in examples[6:])
    assert example['mask'].max() == len(_qupath(masks[test.names[i]], {1: 'g'})['features'])
  assert splits.info['instance_masks']
  assert any('6 images of train/' in n or 'of the 6 images' in n for n in splits.info['notes'])
  # Both layouts at once, or a train/ without test/, is refused by name.
  (root / 'images').mkdir()
  with pytest.raises(paths.DataError, match='both images/ and train/'):
    folders.segmentation(root)
  (root / 'images').rmdir()
  for p in (root / 'test').rglob('*'):
    if p.is_file():
      p.unlink()
  for p in sorted((root / 'test').rglob('*'), reverse=True):
    p.rmdir()
  (root / 'test').rmdir()
  with pytest.raises(paths.DataError, match='has train/ but no test/'):
    folders.segmentation(root)


def test_class_folders_of_whole_slides_give_tissue_tiles_at_the_models_pixel_size(tmp_path):
  import slide_fixtures
  from configs import patches_cnn
  examples = _glas(4)
  root = tmp_path / 'slides'
  for k, cls in enumerate(('A', 'B')):
    (root / cls).mkdir(parents=True)
    rgb, _, _ = slide_fixtures.canvas([e[1] for e in examples[2 * k:2 * k + 2]], columns=1)
    slide_fixtures.write_tiff(root / cls / f'slide{k}.tif', rgb, levels=2, tile=64)
  config = patches_cnn.get_config(f'root={root},smoke')
  config.data.fractions = dict(train=0.5, val=0.0, test=0.5)
  with pytest.raises(paths.DataError, match='slide0.tif is a whole slide: set data.mpp'):
    datasets.get_splits(config)
  config.data.mpp = 0.62005  # the slides' own pixel size: tiles read from level 0 as is
  config.data.tile_size = config.data.tile_stride = 48
  splits = datasets.get_splits(config)
  assert splits.info['class_names'] == ['A', 'B']
  tiles = [splits.train[i] for i in range(len(splits.train))]
  tiles += [splits.tests['test'][i] for i in range(len(splits.tests['test']))]
  assert {int(t['label']) for t in tiles} == {0, 1}
  # Each 200x240 crop holds 4 x 5 tiles of 48 px; glass is never tiled.
  assert 20 <= len(tiles) <= 2 * 2 * 20
  assert all(t['image'].shape == (48, 48, 3) and t['image'].mean() < 235 for t in tiles)


def test_annotated_whole_slides_give_their_annotated_regions_split_by_slide(tmp_path):
  import slide_fixtures
  from configs import warwick_unet
  examples = _glas(6)
  root = tmp_path / 'byo'
  (root / 'images').mkdir(parents=True)
  (root / 'annotations').mkdir()
  truth = {}
  for k in range(3):
    part = examples[2 * k:2 * k + 2]
    rgb, labels, _ = slide_fixtures.canvas([e[1] for e in part], [e[2] for e in part],
                                           columns=1)
    slide_fixtures.write_tiff(root / 'images' / f'slide{k}.tif', rgb, levels=2, tile=64,
                              compression='zlib')
    (root / 'annotations' / f'slide{k}.geojson').write_text(
        json.dumps(_qupath(labels, {1: 'gland'})))
    truth[f'slide{k}'] = rgb, labels
  config = warwick_unet.get_config(f'root={root},classes=2')
  config.data.fractions = dict(train=0.34, val=0.33, test=0.33)
  config.data.slide_region = 128
  with pytest.raises(paths.DataError, match='slide0.tif is a whole slide: set data.mpp'):
    datasets.get_splits(config)
  config.data.mpp = slide_fixtures.GLAS_MPP  # level 0 as is: regions exact to the pixel
  splits = datasets.get_splits(config)
  assert splits.info['instance_masks']
  parts = {'train': splits.train, 'val': splits.val, 'test': splits.tests['test']}
  seen = {}
  for part, data in parts.items():
    for i in range(len(data)):
      name, example = data.names[i], data[i]
      stem, y, x = name.rsplit('_', 2)
      y, x = int(y[1:]), int(x[1:])
      rgb, labels = truth[stem]
      want = np.zeros((128, 128), np.int32)
      crop = labels[y:y + 128, x:x + 128]
      want[:crop.shape[0], :crop.shape[1]] = crop
      assert np.array_equal(example['mask'] > 0, want > 0), name
      assert example['mask'].max() > 0  # only regions with annotated pixels
      image = rgb[y:y + 128, x:x + 128]
      assert np.array_equal(example['image'][:image.shape[0], :image.shape[1]], image)
      seen.setdefault(stem, set()).add(part)
  assert sorted(seen) == ['slide0', 'slide1', 'slide2']
  assert all(len(p) == 1 for p in seen.values())  # a slide's regions in one split
  # Every grid cell with a gland pixel is an example, once.
  want = sum(int(labels[y:y + 128, x:x + 128].any()) for _, labels in truth.values()
             for y in range(0, labels.shape[0], 128) for x in range(0, labels.shape[1], 128))
  assert sum(len(d) for d in parts.values()) == want
  # At half the resolution (level 1, read as is) the masks are the polygons' at that scale.
  config.data.mpp = 2 * slide_fixtures.GLAS_MPP
  data = datasets.get_splits(config).train
  example, name = data[0], data.names[0]
  stem, y, x = name.rsplit('_', 2)
  coarse = truth[stem][1][::2, ::2][int(y[1:]):int(y[1:]) + 128, int(x[1:]):int(x[1:]) + 128]
  got = example['mask'][:coarse.shape[0], :coarse.shape[1]] > 0
  assert (got == (coarse > 0)).mean() > 0.97
  # Annotations that miss their slide (wrong coordinates) are an error naming the file.
  (root / 'annotations' / 'slide1.geojson').write_text(json.dumps({
      'type': 'FeatureCollection', 'features': [{'type': 'Feature', 'properties': {},
      'geometry': shapely.geometry.mapping(shapely.box(1e6, 1e6, 1e6 + 50, 1e6 + 50))}]}))
  with pytest.raises(paths.DataError, match='slide1.geojson: no annotated region lies on '
                     'slide1.tif'):
    datasets.get_splits(config)
  # A slide is labelled by polygons only.
  (root / 'masks').mkdir()
  (root / 'annotations').rename(tmp_path / 'elsewhere')
  with pytest.raises(paths.DataError, match='slide0.tif is a whole slide: its labels come as '
                     'polygon annotations'):
    folders.segmentation(root)
