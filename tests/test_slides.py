"""Whole-slide reading (histojax/data/sources/slides.py) on slides built from real GlaS
tissue: OpenSlide's generic-TIFF and Aperio paths, a slide without a pyramid, pixel sizes
from metadata or --mpp, bad slides refused by name, and tissue detection."""
import numpy as np
import pytest
import tifffile
from PIL import Image

import slide_fixtures
from conftest import glas_records, require_data
from histojax.data.sources import slides


@pytest.fixture(scope='module')
def tissue():
  require_data('glas')
  records = glas_records()[:4]
  images = [np.asarray(Image.open(r.image_path).convert('RGB')) for r in records]
  masks = [(np.asarray(Image.open(r.mask_path)) > 0).astype(np.int32) for r in records]
  return slide_fixtures.canvas(images, masks)


def test_a_pyramidal_tiff_reads_as_a_pyramid_with_its_pixel_size(tmp_path, tissue):
  rgb, _, boxes = tissue
  path = slide_fixtures.write_tiff(tmp_path / 's.tif', rgb)
  with slides.open_slide(path) as slide:
    assert slide.backend == 'openslide'
    assert slide.dimensions[0] == (rgb.shape[1], rgb.shape[0])
    assert len(slide.dimensions) == 3 and slide.downsamples[:2] == pytest.approx([1.0, 2.0])
    assert slide.mpp == pytest.approx(slide_fixtures.GLAS_MPP, rel=1e-4)
    assert slide.mpp_source == 'metadata'
    x, y, w, h = boxes[1]
    region = slide.read(0, x, y, w, h).astype(int)
    decoded = tifffile.imread(path, key=0)[y:y + h, x:x + w].astype(int)
    assert np.abs(region - decoded).max() <= 2  # the stored (JPEG) pixels, in place
    assert np.abs(region - rgb[y:y + h, x:x + w]).mean() < 8  # JPEG's loss only
    x, y = x - x % 2, y - y % 2  # on level 1's grid
    coarse = slide.read(1, x, y, w // 2, h // 2).astype(int)  # level 1: same place, half
    level1 = tifffile.imread(path, key=1)[y // 2:y // 2 + h // 2, x // 2:x // 2 + w // 2]
    assert np.abs(coarse - level1).max() <= 2
    # A model trained at 0.62 µm/px reads level 0; at 1.3 µm/px level 1 (1.24), downsampled.
    assert slide.level_for(0.62) == 0 and slide.level_for(1.3) == 1
    assert slide.level_for(0.3) == 0  # finer than the scan: level 0, upsampled by the caller
    outside = slide.read(0, rgb.shape[1] - 10, 0, 40, 8)
    assert np.all(outside[:, 10:] == 255)  # beyond the slide: white


def test_aperio_style_and_unpyramided_slides(tmp_path, tissue):
  rgb, _, _ = tissue
  h, w = rgb.shape[:2]
  aperio = slide_fixtures.write_tiff(
      tmp_path / 'a.svs', rgb, resolution=False,
      description=slide_fixtures.aperio_description(w, h, mpp=0.5))
  with slides.open_slide(aperio) as slide:
    assert slide._handle.properties['openslide.vendor'] == 'aperio'  # pylint: disable=protected-access
    assert slide.mpp == pytest.approx(0.5) and slide.mpp_source == 'metadata'
  flat = slide_fixtures.write_tiff(tmp_path / 'flat.tif', rgb, levels=1)
  with slides.open_slide(flat) as slide:
    assert len(slide.dimensions) == 1 and slide.level_for(2.0) == 0
    thumb, factor = slide.thumbnail(max_side=512)
    assert max(thumb.shape[:2]) <= 512 and factor == pytest.approx(max(h, w) / 512, rel=0.2)


def test_pixel_size_missing_or_given(tmp_path, tissue):
  rgb, _, _ = tissue
  path = slide_fixtures.write_tiff(tmp_path / 'nompp.tif', rgb, resolution=False, levels=2)
  with pytest.raises(slides.SlideError, match=r'nompp.tif: no pixel size in its metadata; '
                                              r'give it .* with --mpp='):
    slides.open_slide(path)
  with slides.open_slide(path, mpp=0.62) as slide:
    assert slide.mpp == 0.62 and slide.mpp_source == '--mpp'


def test_bad_slides_are_refused_by_name(tmp_path, tissue):
  rgb, _, _ = tissue
  good = slide_fixtures.write_tiff(tmp_path / 'good.tif', rgb)
  data = good.read_bytes()
  truncated = tmp_path / 'truncated.tif'
  truncated.write_bytes(data[:len(data) // 3])
  with pytest.raises(slides.SlideError, match='truncated.tif: unreadable'):
    slides.open_slide(truncated)  # at open: its last tiles are probed
  garbage = tmp_path / 'garbage.svs'
  garbage.write_bytes(b'not a slide at all' * 100)
  with pytest.raises(slides.SlideError, match='garbage.svs: unreadable slide'):
    slides.open_slide(garbage)
  with pytest.raises(slides.SlideError, match=r"notes.txt: unsupported slide format '.txt'"):
    (tmp_path / 'notes.txt').write_text('x')
    slides.open_slide(tmp_path / 'notes.txt')
  with pytest.raises(slides.SlideError, match='missing.svs: no such slide'):
    slides.open_slide(tmp_path / 'missing.svs')


def test_tissue_mask_finds_the_tissue_and_not_the_glass(tissue):
  rgb, _, boxes = tissue
  factor = 8
  thumb = rgb[::factor, ::factor]
  mask = slides.tissue_mask(thumb)
  truth = np.zeros(mask.shape, bool)
  for x, y, w, h in boxes:
    truth[y // factor:(y + h) // factor, x // factor:(x + w) // factor] = True
  inter, union = (mask & truth).sum(), (mask | truth).sum()
  assert inter / union > 0.85
  assert not slides.tissue_mask(np.full((200, 300, 3), 246, np.uint8)).any()  # empty glass


def test_otsu_splits_two_clusters():
  rng = np.random.default_rng(0)
  values = np.concatenate([rng.normal(0.1, 0.02, 1000), rng.normal(0.6, 0.05, 500)])
  values = np.clip(values, 0, 1)
  t = slides.otsu_threshold(values)
  assert values[:1000].max() < t < values[1000:].min()
  # Against brute force: the between-class variance of every bin centre, ours the largest.
  centres = (np.arange(256) + 0.5) / 256
  binned = centres[np.minimum((values * 256).astype(int), 255)]

  def between(c):
    low, high = binned[binned <= c], binned[binned > c]
    if not len(low) or not len(high):
      return 0.0
    return len(low) * len(high) * (low.mean() - high.mean()) ** 2
  assert between(t) == pytest.approx(max(between(c) for c in centres))


def test_ome_pyramids_and_stripped_tiffs_read_with_tifffile(tmp_path, tissue):
  rgb = tissue[0][:1024, :1536]
  ome = tmp_path / 'pyramid.ome.tif'
  with tifffile.TiffWriter(ome, bigtiff=True, ome=True) as tif:
    tif.write(rgb, subifds=2, tile=(256, 256), compression='zlib', photometric='rgb',
              metadata={'PhysicalSizeX': 0.5, 'PhysicalSizeY': 0.5, 'axes': 'YXS'})
    for i in (1, 2):
      tif.write(rgb[::2**i, ::2**i], subfiletype=1, tile=(256, 256), compression='zlib',
                photometric='rgb')
  with slides.open_slide(ome) as slide:
    assert slide.backend == 'tifffile' and slide.mpp == 0.5
    assert slide.dimensions == [(1536, 1024), (768, 512), (384, 256)]
    np.testing.assert_array_equal(slide.read(1, 512, 256, 64, 32),
                                  rgb[::2, ::2][128:160, 256:320])
    edge = slide.read(0, 1500, 1000, 64, 64)  # partly outside: white there
    np.testing.assert_array_equal(edge[:24, :36], rgb[1000:, 1500:])
    assert np.all(edge[24:] == 255) and np.all(edge[:, 36:] == 255)
  stripped = tmp_path / 'stripped.tif'  # not tiled: OpenSlide refuses it, tifffile reads it
  tifffile.imwrite(stripped, rgb, photometric='rgb', resolution=(1e4 / 0.25, 1e4 / 0.25),
                   resolutionunit='CENTIMETER')
  with slides.open_slide(stripped) as slide:
    assert slide.backend == 'tifffile' and slide.mpp == pytest.approx(0.25)
    np.testing.assert_array_equal(slide.read(0, 10, 20, 30, 40), rgb[20:60, 10:40])


def test_pale_tissue_beside_dense_tissue_is_still_tissue(tissue):
  """Otsu alone splits pale from dense stain on such a slide; the clamp keeps both."""
  rgb, _, boxes = tissue
  rgb = rgb.copy()
  for x, y, w, h in boxes[:2]:  # two images faded towards white, as pale H&E looks
    rgb[y:y + h, x:x + w] = (0.3 * rgb[y:y + h, x:x + w] + 0.7 * 250).astype(np.uint8)
  mask = slides.tissue_mask(rgb[::4, ::4])
  for x, y, w, h in boxes:
    assert mask[y // 4:(y + h) // 4, x // 4:(x + w) // 4].mean() > 0.9
  assert not mask[:20, :20].any()  # the glass


def test_specks_are_judged_by_their_size_in_microns(tmp_path, tissue):
  """A 300 px piece of tissue: 0.035 mm² at 0.62 µm/px (tissue), 900 µm² at 0.1 (a speck),
  whatever share of the thumbnail it is (a share would drop whole biopsies on big slides)."""
  rgb, _, boxes = tissue
  x, y, _, _ = boxes[0]
  canvas = np.full((2048, 2048, 3), 246, np.uint8)
  canvas[900:1200, 900:1200] = rgb[y:y + 300, x:x + 300]
  for mpp, found in ((0.62, True), (0.1, False)):
    path = slide_fixtures.write_tiff(tmp_path / f'piece{mpp}.tif', canvas, mpp=mpp, levels=1)
    with slides.open_slide(path) as slide:
      _, mask, _ = slides.View(slide, 1.0).tissue(512)
      assert mask.any() == found, mpp
