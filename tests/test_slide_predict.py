"""Whole-slide prediction (histojax/slide_predict.py, histojax/slide_export.py) on slides built
from real GlaS tissue: tiles stitched exactly as one sliding window over the whole slide, the
pyramidal label TIFF, GeoJSON objects merged across tiles, and a cohort run end to end with
bad slides, re-runs and shards."""
import csv
import functools
import json
import subprocess

import ml_collections
import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

import slide_fixtures
from conftest import glas_records, launch, require_data
from histojax import export, inference, predict, slide_predict
from histojax.data.sources import slides

CLASSES = ['background', 'gland']


@pytest.fixture(scope='module')
def tissue():
  require_data('glas')
  records = glas_records()[:4]
  images = [np.asarray(Image.open(r.image_path).convert('RGB')) for r in records]
  masks = [(np.asarray(Image.open(r.mask_path)) > 0).astype(np.int32) for r in records]
  return slide_fixtures.canvas(images, masks)


def _toy_model(windows):
  """A window-dependent stand-in for a network: gland probability from each pixel's
  saturation and its window's mean, so blending and window placement both matter."""
  x = windows.astype(np.float32) / 255
  sat = x.max(-1) - x.min(-1)
  p = np.clip(2.5 * sat + 1.5 * sat.mean(axis=(1, 2), keepdims=True) - 0.35, 0, 1)
  return np.stack([1 - p, p], -1)


def _predictor(tta, overlap=0.5):
  one_view = functools.partial(inference.sliding_window, _toy_model, window=(64, 64),
                               overlap=overlap, window_batch=4)
  return lambda image, keep=None: inference.with_tta(one_view, image, tta, keep=keep)


def _config(mpp, tile, overlap=0.5):
  return ml_collections.ConfigDict({
      'data': {'mpp': mpp, 'scale': 1.0},
      'inference': {'slide_tile': tile, 'window': (64, 64), 'overlap': overlap}})


def test_tiling_rounds_to_strides_and_reaches_every_window():
  assert slide_predict.tiling((64, 64), 0.5, 200) == (192, (32, 32), (32, 32))
  # A window that is not a whole number of strides: 256 px every 192 px reaches one stride
  # back and 64 px on; tiles a multiple of 192 and of 16 (TIFF tiles).
  assert slide_predict.tiling((256, 256), 0.25, 2048) == (2112, (192, 192), (64, 64))
  assert slide_predict.tiling((300, 300), 0.5, 2048)[0] % 16 == 0


@pytest.mark.parametrize('overlap', [0.5, 0.25])
def test_tiles_stitch_exactly_as_one_sliding_window_over_the_slide(tmp_path, tissue, overlap):
  rgb, _, _ = tissue
  # Whole strides (32 or 48 px) of the model's pixels, and a band of bare glass on the right.
  rgb = np.concatenate([rgb[:1248, :1824], np.full((1248, 576, 3), 246, np.uint8)], axis=1)
  path = slide_fixtures.write_tiff(tmp_path / 's.tif', rgb)
  run = slide_predict.SlideRun(_predictor('flips', overlap),
                               _config(slide_fixtures.GLAS_MPP, 200, overlap), CLASSES,
                               {}, {}, tmp_path, object_type='annotation', scale=1.0)
  row = run.predict(path, 's.tif', 's')
  assert row['status'] == 'ok' and row['tiles'] == 7 * 13  # tile 200 rounded to 192
  assert row['tiles_with_tissue'] == 7 * 10  # the glass is not predicted
  labels = tifffile.imread(tmp_path / 's_mask.tif', key=0)
  assert labels.shape == rgb.shape[:2]
  # The reference: one sliding window over the whole slide (white beyond it, windows on the
  # same grid), the same tissue mask.
  _, (m, _), (a, _) = slide_predict.tiling((64, 64), overlap, 200)
  with slides.open_slide(path) as slide:
    view = slides.View(slide, slide.mpp)
    assert view.level == 0 and view.level_factor == 1
    _, tissue, per_px = view.tissue(slide_predict.THUMBNAIL_SIDE)
    h, w = rgb.shape[:2]
    whole = view.read(-m, -m, h + m + a, w + m + a)
    keep = view.tissue_crop(tissue, per_px, -m, -m, h + m + a, w + m + a)
  probs = _predictor('flips', overlap)(whole, keep=keep)[m:m + h, m:m + w]
  reference = np.where(keep[m:m + h, m:m + w], np.argmax(probs, -1), 0)  # glass: background
  assert (labels != reference).mean() < 1e-5  # summation order only
  assert 0.05 < labels.mean() < 0.95
  # GeoJSON: one feature per 4-connected object (none duplicated at tile edges), rasterising
  # back to the label map (level-0 px = model px here).
  fc = json.loads((tmp_path / 's.geojson').read_text(encoding='utf-8'))
  assert len(fc['features']) == export._components(labels == 1)[1]  # pylint: disable=protected-access
  assert np.array_equal(export.rasterize(fc, labels.shape, CLASSES), labels)
  total = sum(f['properties']['measurements']['Area px^2'] for f in fc['features'])
  assert total == labels.sum()
  assert row['gland_objects'] == len(fc['features'])


def test_a_40x_slide_is_read_at_the_models_pixel_size(tmp_path, tissue):
  rgb, _, _ = tissue
  path = slide_fixtures.write_tiff(tmp_path / 's40.tif', rgb, mpp=0.31, levels=3)
  with slides.open_slide(path) as slide:
    view = slides.View(slide, 1.24)
    # 0.31 µm/px: level 2 is 1.24 µm/px, read as is; the label map is a quarter of level 0.
    assert view.level == 2 and view.level_factor == 1.0
    assert view.shape == (round(rgb.shape[0] / 4), round(rgb.shape[1] / 4))
    view = slides.View(slide, 1.0)
    assert view.level == 1 and view.level_factor == pytest.approx(1.0 / 0.62, rel=1e-3)
    region = view.read(100, 100, 50, 70)  # level 1 downsampled to 1 µm/px
    assert region.shape == (50, 70, 3)
  # Tissue tiles for training: 100 px at 0.62 µm/px (level 1), only where there is tissue.
  tiles = list(slides.tissue_tiles(path, 100, 0.62, min_tissue=0.9))
  assert 10 < len(tiles) < (rgb.shape[0] // 200) * (rgb.shape[1] // 200)
  for (y, x), tile in tiles:
    assert tile.shape == (100, 100, 3) and tile.mean() < 235  # tissue, not glass


def test_label_pyramid_reads_in_openslide_with_its_pixel_size(tmp_path):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, (1500, 2100), dtype=np.uint8)
  blocks = (np.pad(labels[y:y + 256, x:x + 256], ((0, max(0, y + 256 - 1500)),
                                                  (0, max(0, x + 256 - 2100))))
            for y in range(0, 1500, 256) for x in range(0, 2100, 256))
  from histojax import slide_export
  slide_export.write_level(tmp_path / 'l0.tif', blocks, labels.shape, 256, 1.24)
  slide_export.build_pyramid(tmp_path / 'l0.tif', tmp_path / 'mask.tif', labels.shape, 1.24)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['l0.tif', 'mask.tif']  # temps gone
  s = openslide.OpenSlide(str(tmp_path / 'mask.tif'))
  assert s.level_dimensions == ((2100, 1500), (1050, 750), (525, 375), (263, 188))
  assert float(s.properties['openslide.mpp-x']) == pytest.approx(1.24)
  level0 = np.asarray(s.read_region((0, 0), 0, (2100, 1500)))[..., 0]
  assert np.array_equal(level0, labels)
  level1 = np.asarray(s.read_region((0, 0), 1, (1050, 750)))[..., 0]
  assert np.array_equal(level1, labels[::2, ::2])  # labels are picked, never averaged


def test_a_slide_far_from_the_models_pixel_size_warns(tmp_path, tissue, caplog):
  rgb, _, _ = tissue
  path = slide_fixtures.write_tiff(tmp_path / 'coarse.tif', rgb[96:352, 96:416], mpp=2.5,
                                   levels=1)
  run = slide_predict.SlideRun(_predictor('none'), _config(0.5, 256), CLASSES, {}, {},
                               tmp_path, object_type='annotation', scale=1.0)
  row = run.predict(path, 'coarse.tif', 'coarse')  # 5x upsampled to the model's 0.5 µm/px
  assert row['status'] == 'ok' and row['level'] == 0
  assert 'coarse.tif: read at 2.500 µm/px' in caplog.text and 'wrong pixel size' in caplog.text
  assert 'data.augment.glass_edge is off' in caplog.text  # this model never saw glass
  caplog.clear()
  config = _config(0.5, 256)
  config.data.augment = {'glass_edge': 0.3}
  slide_predict.SlideRun(_predictor('none'), config, CLASSES, {}, {}, tmp_path,
                         object_type='annotation', scale=1.0)
  assert 'glass_edge' not in caplog.text
  with tifffile.TiffFile(tmp_path / 'coarse_mask.tif') as tif:
    assert tif.pages[0].shape == (256 * 5, 320 * 5)


def test_an_unwritable_output_folder_is_one_error(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(Exception, match=r'--output .*file/out: cannot write there'):
    predict._check_writable(blocker / 'out')  # pylint: disable=protected-access


def test_shards_split_a_cohort():
  assert predict.parse_shard(None) == (0, 1) and predict.parse_shard('2/3') == (2, 3)
  for bad in ('3/3', '-1/2', 'a/b', '1'):
    with pytest.raises(Exception, match='--shard=.*expected I/N'):
      predict.parse_shard(bad)


def _rows(out):
  with open(out / 'slides.csv', newline='', encoding='utf-8') as f:
    return {r['slide']: r for r in csv.DictReader(f)}


def test_a_cohort_end_to_end_with_bad_slides_reruns_and_shards(tmp_path, tissue):
  from configs import warwick_unet
  from histojax import train
  config = warwick_unet.get_config('smoke')
  config.data.scale = 0.5  # the model's pixels are 1.24 µm: slides at 0.62 are halved
  config.inference.tta = 'none'
  train.train_and_evaluate(config, tmp_path / 'w')
  rgb, _, _ = tissue
  rgb = rgb[:900, :1400]
  h, w = rgb.shape[:2]
  cohort = tmp_path / 'cohort'
  cohort.mkdir()
  slide_fixtures.write_tiff(cohort / 'good.tif', rgb)
  slide_fixtures.write_tiff(cohort / 'vendor.svs', rgb, resolution=False,
                            description=slide_fixtures.aperio_description(w, h, mpp=0.31))
  slide_fixtures.write_tiff(cohort / 'blank.tif', np.full_like(rgb, 246))
  slide_fixtures.write_tiff(cohort / 'nompp.tif', rgb, resolution=False)
  data = (cohort / 'good.tif').read_bytes()
  (cohort / 'truncated.tif').write_bytes(data[:len(data) // 3])
  Image.fromarray(rgb[:300, :400]).save(cohort / 'flat.png')  # an image: the per-image path
  out = tmp_path / 'out'
  args = ['--mode=predict', f'--workdir={tmp_path / "w"}', f'--input={cohort}',
          '--config=configs/warwick_unet.py:smoke', '--config.data.scale=0.5',
          '--config.inference.tta=none', '--config.inference.slide_tile=256']

  def predict_run(output, *flags):
    proc = launch([*args, f'--output={output}', *flags], stdout=subprocess.PIPE,
                  stderr=subprocess.STDOUT, text=True)
    text = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, text[-3000:]
    return text

  text = predict_run(out)
  rows = _rows(out)
  assert sorted(rows) == ['blank.tif', 'good.tif', 'nompp.tif', 'truncated.tif', 'vendor.svs']
  assert rows['good.tif']['status'] == rows['vendor.svs']['status'] == 'ok'
  assert 'no tissue found' in rows['blank.tif']['error']
  assert 'no pixel size' in rows['nompp.tif']['error']
  assert 'truncated.tif: unreadable' in rows['truncated.tif']['error']
  for name in ('blank', 'nompp', 'truncated'):
    assert name in text and not list(out.glob(f'{name}_*')) and not (out / f'{name}.geojson').exists()
  assert not [p for p in out.iterdir() if p.name.startswith('.')]  # no temporary file left
  assert (out / 'flat_mask.png').exists() and not (out / 'flat_mask.tif').exists()
  # Both slides read for the model's 1.24 µm/px: level 1 of the 0.62 one, as is; the 0.31 one
  # (Aperio metadata) has levels of 0.31 and 0.62 µm/px: level 1, halved.
  assert rows['good.tif']['level'] == rows['vendor.svs']['level'] == '1'
  mask = openslide.OpenSlide(str(out / 'good_mask.tif'))
  assert mask.level_dimensions[0] == (w // 2, h // 2)
  assert float(mask.properties['openslide.mpp-x']) == pytest.approx(1.2401)
  assert mask.level_count >= 2
  fc = json.loads((out / 'good.geojson').read_text(encoding='utf-8'))
  xs = [x for f in fc['features'] for ring in f['geometry']['coordinates'][:1]
        for x, _ in (ring if f['geometry']['type'] == 'Polygon' else ring[0])]
  assert xs and max(xs) <= w + 2 and max(xs) > w / 2 + 2  # level-0 pixels of the slide
  for name in ('good', 'vendor'):
    overlay = Image.open(out / f'{name}_overlay.png')
    assert overlay.size[0] == w if name == 'good' else overlay.size[0] > 0
    assert Image.open(out / f'{name}_tissue.png').mode == 'L'
  # Re-run: finished slides are skipped, failed ones tried again (nompp, now with --mpp).
  text = predict_run(out, '--mpp=0.62')
  assert 'good.tif: finished in an earlier run' in text
  assert 'vendor.svs: finished in an earlier run' in text
  assert _rows(out)['nompp.tif']['status'] == 'ok'
  # Shards over a CSV cohort (one row names a slide that is not there): two runs into one
  # folder, each its own slides; either run's merge sees both.
  listing = tmp_path / 'cohort.csv'
  listing.write_text('filename\n' + ''.join(f'cohort/{p.name}\n' for p in sorted(
      cohort.iterdir())) + 'cohort/missing.svs\n')
  args[2] = f'--input={listing}'
  sharded = tmp_path / 'sharded'
  for shard in ('0/2', '1/2'):
    predict_run(sharded, f'--shard={shard}', '--mpp=0.62')
  merged = _rows(sharded)
  assert sorted(merged) == sorted([*(f'cohort/{n}' for n in rows), 'cohort/missing.svs'])
  assert 'missing.svs: no such slide' in merged['cohort/missing.svs']['error']
  assert {n for n, r in merged.items() if r['status'] == 'ok'} == {
      'cohort/good.tif', 'cohort/vendor.svs', 'cohort/nompp.tif'}
