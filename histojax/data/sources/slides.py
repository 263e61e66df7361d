"""Whole-slide images: pyramid levels, pixel size, regions at a chosen resolution, tissue.

OpenSlide (the openslide-bin wheel bundles the library) reads SVS, NDPI, MRXS, SCN and
generic tiled TIFF, including pyramids written as top-level pages; tifffile reads the
pyramidal and OME-TIFFs OpenSlide does not (through zarr: only the tiles a region touches are
decoded). Coordinates follow OpenSlide: (x, y) in level-0 pixels, sizes in the level's pixels.

The pixel size (µm/px) comes from the slide's metadata (OpenSlide's `openslide.mpp-x`, the
TIFF resolution tags, OME PhysicalSizeX), or from `mpp=` when it has none; a slide with
neither is refused, naming it.
"""
import dataclasses
import logging
import math
import pathlib

import numpy as np
from PIL import Image
from scipy import ndimage

from histojax.data import paths

THUMBNAIL_BAND_PX = 16 * 2**20  # pixels of one band read for a thumbnail
MIN_TISSUE_UM2 = 1e4  # 0.01 mm² (100 µm square): smaller pieces on a thumbnail are specks
# Flat images (PNG, JPEG, BMP, a plain TIFF) are decoded whole up to PIL's limit; a TIFF that is
# tiled, pyramidal or larger is read as a slide (by region).
FLAT_MAX_PIXELS = 178956970
VENDOR_SUFFIXES = ('.svs', '.ndpi', '.mrxs', '.scn', '.vms', '.vmu', '.bif', '.svslide',
                   '.ome.tif', '.ome.tiff')
SUFFIXES = ('.svs', '.ndpi', '.mrxs', '.scn', '.vms', '.vmu', '.bif', '.svslide', '.tif',
            '.tiff', '.ome.tif', '.ome.tiff')


class SlideError(paths.DataError):
  """A slide that cannot be read as asked (names the slide and why)."""


@dataclasses.dataclass
class Slide:
  """An open slide. `dimensions[i]` is level i's (width, height), `downsamples[i]` its
  factor from level 0, `mpp` level 0's µm per pixel and `mpp_source` where it came from."""
  path: pathlib.Path
  backend: str
  dimensions: list
  downsamples: list
  mpp: float
  mpp_source: str
  _handle: object = dataclasses.field(repr=False, default=None)
  _levels: list = dataclasses.field(repr=False, default=None)

  def level_mpp(self, level):
    return self.mpp * self.downsamples[level]

  def level_for(self, target_mpp):
    """The coarsest level at least as fine as `target_mpp` (1% slack), so that a region read
    there is downsampled, never upsampled, to the target; level 0 when every level is
    coarser."""
    fine_enough = [i for i in range(len(self.dimensions))
                   if self.level_mpp(i) <= target_mpp * 1.01]
    return max(fine_enough, key=self.level_mpp) if fine_enough else 0

  def read(self, level, x, y, width, height):
    """RGB uint8 [height, width, 3] of level `level` at level-0 position (x, y); outside the
    slide is white. A tile that cannot be decoded is a SlideError naming the slide."""
    try:
      return self._read(level, x, y, width, height)
    except Exception as e:  # pylint: disable=broad-except
      raise SlideError(f'{self.path}: unreadable region (level {level}, x {x}, y {y}, '
                       f'{width}x{height}): truncated or corrupt? {type(e).__name__}: {e}'
                       ) from e

  def probe(self):
    """Reads a pixel at the first and last corner of every level: a truncated or damaged
    slide fails here, at open, rather than half-way through a prediction."""
    for level, (w, h) in enumerate(self.dimensions):
      scale = self.downsamples[level]
      for lx, ly in ((0, 0), (w - 1, h - 1)):
        self.read(level, lx * scale, ly * scale, 1, 1)

  def _read(self, level, x, y, width, height):
    if self.backend == 'openslide':
      region = self._handle.read_region((int(x), int(y)), level, (int(width), int(height)))
      rgba = np.asarray(region)
      alpha = rgba[..., 3:4].astype(np.uint16)  # transparent = outside the scan: white
      return ((rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
    scale = self.downsamples[level]
    lx, ly = int(round(x / scale)), int(round(y / scale))
    out = np.full((int(height), int(width), 3), 255, np.uint8)
    w_level, h_level = self.dimensions[level]
    x0, y0 = max(lx, 0), max(ly, 0)
    x1, y1 = min(lx + int(width), w_level), min(ly + int(height), h_level)
    if x1 > x0 and y1 > y0:
      block = np.asarray(self._levels[level][y0:y1, x0:x1])
      out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = _rgb(block)
    return out

  def thumbnail(self, max_side=2048):
    """(RGB image of the whole slide with its longer side <= max_side, its downsample from
    level 0), read from the coarsest level that is at least that large."""
    w0, h0 = self.dimensions[0]
    target = max(w0, h0) / max_side
    level = max((i for i, d in enumerate(self.downsamples) if d <= max(target, 1.0)),
                key=lambda i: self.downsamples[i])
    w, h = self.dimensions[level]
    factor = max(1, int(np.ceil(max(w, h) / max_side)))
    scale = self.downsamples[level]
    # In bands of rows, every factor-th pixel (nearest: the thumbnail is for masks and an
    # overview), so that a slide without a pyramid is never read whole.
    band = factor * max(1, THUMBNAIL_BAND_PX // max(w, 1) // factor)
    # A copy of each band's sample: a strided view would keep the whole band alive.
    parts = [np.ascontiguousarray(self.read(level, 0, y * scale, w, min(band, h - y))
                                  [::factor, ::factor]) for y in range(0, h, band)]
    return np.concatenate(parts), scale * factor

  def close(self):
    if self._handle is not None:
      self._handle.close()  # an OpenSlide or a tifffile.TiffFile
    self._handle = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class View:
  """A slide seen at `mpp` µm per pixel: `shape` (H, W) in those pixels, read from `level`
  (the coarsest at least as fine), `factor` level-0 px per view px, `level_factor` level px
  per view px (1 when the level is within 1% of `mpp`: read as is)."""

  def __init__(self, slide, mpp):
    self.slide, self.mpp = slide, float(mpp)
    self.factor = self.mpp / slide.mpp
    self.level = slide.level_for(self.mpp)
    self.level_factor = self.factor / slide.downsamples[self.level]
    if abs(self.level_factor - 1) < 0.01:  # the level's own pixels (levels' sizes round)
      self.level_factor, self.factor = 1.0, slide.downsamples[self.level]
    width, height = slide.dimensions[0]
    self.shape = (max(1, round(height / self.factor)), max(1, round(width / self.factor)))

  def read(self, y, x, h, w):
    """uint8 [h, w, 3] of view rows y.. and columns x.. (outside the slide: white),
    resampled from the level (antialiased bilinear) when it is not at `mpp`."""
    lf, ds = self.level_factor, self.slide.downsamples[self.level]
    if lf == 1.0:
      return self.slide.read(self.level, round(x * ds), round(y * ds), w, h)
    # From the level pixel the region starts in; the fraction goes into the resize box, so
    # regions of neighbouring tiles sample one continuous grid.
    ly, lx = y * lf, x * lf
    iy, ix = math.floor(ly), math.floor(lx)
    fy, fx = ly - iy, lx - ix
    lh, lw = math.ceil(fy + h * lf) + 1, math.ceil(fx + w * lf) + 1
    rgb = self.slide.read(self.level, round(ix * ds), round(iy * ds), lw, lh)
    box = (fx, fy, fx + w * lf, fy + h * lf)
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR, box=box))

  def tissue(self, thumbnail_side=2048):
    """(thumbnail RGB, its tissue mask, thumbnail px per view px). Pieces of tissue under
    MIN_TISSUE_UM2 are specks (a fraction of the thumbnail would drop whole biopsies on a
    large slide)."""
    thumb, downsample = self.slide.thumbnail(thumbnail_side)
    thumb_mpp = self.slide.mpp * downsample
    mask = tissue_mask(thumb, min_object_px=MIN_TISSUE_UM2 / thumb_mpp ** 2)
    return thumb, mask, self.factor / downsample

  def tissue_crop(self, tissue, per_view_px, y, x, h, w):
    """bool [h, w]: which view pixels of rows y.., columns x.. lie on tissue (nearest
    thumbnail pixel; outside the slide: False)."""
    def index(start, size, limit):
      idx = np.floor((start + np.arange(size) + 0.5) * per_view_px).astype(np.int64)
      return np.clip(idx, 0, limit - 1), (idx >= 0) & (idx < limit)
    rows, row_in = index(y, h, tissue.shape[0])
    cols, col_in = index(x, w, tissue.shape[1])
    return tissue[np.ix_(rows, cols)] & row_in[:, None] & col_in[None, :]


def tissue_tiles(path, size, mpp, *, stride=None, min_tissue=0.5, slide_mpp=None):
  """Yields ((row, col) in view px, uint8 [size, size, 3]) for the tiles of a slide read at
  `mpp` µm/px whose tissue fraction (on the thumbnail's mask) is >= min_tissue; a tile is
  read only when it qualifies, so memory holds one tile."""
  stride = stride or size
  with open_slide(path, mpp=slide_mpp) as slide:
    view = View(slide, mpp)
    _, tissue, per_px = view.tissue()
    height, width = view.shape
    for y in range(0, height - size + 1, stride):
      for x in range(0, width - size + 1, stride):
        if view.tissue_crop(tissue, per_px, y, x, size, size).mean() >= min_tissue:
          yield (y, x), view.read(y, x, size, size)


def _rgb(block):
  block = np.asarray(block)
  if block.ndim == 2:
    return np.repeat(block[..., None], 3, axis=-1).astype(np.uint8)
  return block[..., :3].astype(np.uint8)


def is_slide(path):
  name = pathlib.Path(path).name.lower()
  return name.endswith(SUFFIXES)


def is_whole_slide(path, small_tiled=True):
  """True for a vendor slide format, or a TIFF that is tiled, pyramidal or larger than
  FLAT_MAX_PIXELS; other images (and TIFFs tifffile cannot parse) are read whole.
  small_tiled=False: a tiled TIFF of one level within FLAT_MAX_PIXELS is an image too."""
  name = pathlib.Path(path).name.lower()
  if name.endswith(VENDOR_SUFFIXES):
    return True
  if not name.endswith(('.tif', '.tiff')):
    return False
  import tifffile  # pylint: disable=g-import-not-at-top
  try:
    with tifffile.TiffFile(path) as tif:
      page, series = tif.pages[0], tif.series[0]
      return bool((small_tiled and page.is_tiled) or len(series.levels) > 1 or
                  page.imagewidth * page.imagelength > FLAT_MAX_PIXELS)
  except Exception:  # pylint: disable=broad-except
    return False  # the flat reader names what is wrong with it


def open_slide(path, mpp=None):
  """Opens `path` with OpenSlide, else tifffile. `mpp`: the pixel size to use when the
  metadata has none (a metadata value wins, and a different `mpp` is logged)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise SlideError(f'{path}: no such slide.')
  if not is_slide(path):
    raise SlideError(f'{path}: unsupported slide format {path.suffix!r}; slides are '
                     f'{", ".join(SUFFIXES)} (flat PNG/JPEG images are read whole instead).')
  if path.name.lower().endswith(('.ome.tif', '.ome.tiff')):
    return _open_tifffile(path, mpp)  # OpenSlide sees one level of OME's SubIFD pyramids
  import openslide  # pylint: disable=g-import-not-at-top
  try:
    handle = openslide.OpenSlide(str(path))
  except openslide.OpenSlideUnsupportedFormatError:
    return _open_tifffile(path, mpp)
  except openslide.OpenSlideError as e:
    raise SlideError(f'{path}: unreadable slide (truncated or corrupt?): {e}') from e
  try:
    value = handle.properties.get(openslide.PROPERTY_NAME_MPP_X)
    found = float(value) if value else None
  except ValueError:
    found = None
  if found is None and path.suffix.lower() in ('.tif', '.tiff'):
    import tifffile  # pylint: disable=g-import-not-at-top
    try:
      with tifffile.TiffFile(path) as tif:
        found = _tiff_mpp(tif)
    except Exception:  # pylint: disable=broad-except
      found = None  # OpenSlide read it; no pixel size is the only loss
  slide = Slide(path, 'openslide', [tuple(d) for d in handle.level_dimensions],
                [float(d) for d in handle.level_downsamples], 0.0, '', handle)
  return _checked(slide, found, mpp)


def _checked(slide, found, mpp):
  """The slide probed for damage and given its pixel size; closed on any error."""
  try:
    slide.probe()
    slide.mpp, slide.mpp_source = _pixel_size(slide.path, found, mpp)
  except SlideError:
    slide.close()
    raise
  return slide


def _open_tifffile(path, mpp):
  import tifffile  # pylint: disable=g-import-not-at-top
  import zarr  # pylint: disable=g-import-not-at-top
  try:
    tif = tifffile.TiffFile(path)
    series = tif.series[0]
    levels = [zarr.open(series.aszarr(level=i), mode='r') for i in range(len(series.levels))]
  except Exception as e:  # pylint: disable=broad-except
    raise SlideError(f'{path}: unreadable slide (neither OpenSlide nor tifffile reads it: '
                     f'{type(e).__name__}: {e})') from e
  axes = series.axes.upper()
  if 'Y' not in axes or 'X' not in axes:
    tif.close()
    raise SlideError(f'{path}: the first image series has axes {series.axes!r}, not an image.')
  dims = [(lvl.shape[axes.index('X')], lvl.shape[axes.index('Y')]) for lvl in series.levels]
  slide = Slide(path, 'tifffile', dims, [dims[0][0] / d[0] for d in dims], 0.0, '', tif,
                levels)
  return _checked(slide, _tiff_mpp(tif), mpp)


def _tiff_mpp(tif):
  """µm per pixel from OME PhysicalSizeX or the first page's resolution tags, or None."""
  if tif.is_ome and tif.ome_metadata and 'PhysicalSizeX="' in tif.ome_metadata:
    return float(tif.ome_metadata.split('PhysicalSizeX="', 1)[1].split('"', 1)[0])
  page = tif.pages[0]
  tags = page.tags
  if 'XResolution' not in tags or 'ResolutionUnit' not in tags:
    return None
  numerator, denominator = tags['XResolution'].value
  per_unit = numerator / denominator if denominator else 0
  unit = int(tags['ResolutionUnit'].value)
  microns = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre; 1 = none
  if not per_unit or microns is None:
    return None
  return microns / per_unit


def _pixel_size(path, found, given):
  if found and found > 0:
    if given and abs(given / found - 1) > 0.01:
      logging.warning('%s: its metadata says %.4f µm/px; --mpp=%.4f is ignored.', path, found,
                      given)
    return found, 'metadata'
  if given:
    return float(given), '--mpp'
  raise SlideError(f'{path}: no pixel size in its metadata; give it (µm per pixel, e.g. 0.5 '
                   'for a 20x scan, 0.25 for 40x) with --mpp= to predict, or '
                   '--config.data.slide_mpp= to train.')


# ------------------------------------------------------------------------------ tissue
def otsu_threshold(values, bins=256):
  """Otsu's threshold of a 1-D array of values in [0, 1]."""
  hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
  hist = hist.astype(np.float64)
  centres = (edges[:-1] + edges[1:]) / 2
  w0 = np.cumsum(hist)
  w1 = w0[-1] - w0
  m0 = np.cumsum(hist * centres)
  mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
  mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
  between = w0 * w1 * (mean0 - mean1) ** 2
  return float(centres[int(np.argmax(between))])


def tissue_mask(rgb, min_saturation=0.03, max_saturation=0.05, min_object_fraction=0.0005,
                min_object_px=None):
  """Boolean tissue mask of an RGB thumbnail: saturation (3x3 median) above Otsu's threshold
  clamped to [min_saturation, max_saturation], closed and opened, holes filled, components
  smaller than `min_object_px` (default: `min_object_fraction` of the image) dropped. H&E
  tissue is saturated; glass,
  background and most pen-free artefacts are not. The clamp: above, an empty slide has no
  tissue; below, pale tissue stays tissue when Otsu splits pale from dense stain instead of
  tissue from glass (seen on a canvas of GlaS images: Otsu 0.24, pale images' median 0.09)."""
  rgb = np.asarray(rgb, np.float32) / 255.0
  high, low = rgb.max(-1), rgb.min(-1)
  saturation = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
  saturation = ndimage.median_filter(saturation, size=3)
  threshold = min(max(otsu_threshold(saturation.ravel()), min_saturation), max_saturation)
  mask = saturation > threshold
  structure = np.ones((3, 3), bool)
  mask = ndimage.binary_closing(mask, structure, iterations=2)
  mask = ndimage.binary_opening(mask, structure, iterations=1)
  mask = ndimage.binary_fill_holes(mask)
  labels, n = ndimage.label(mask)
  if n:
    sizes = np.bincount(labels.ravel())[1:]
    smallest = min_object_fraction * mask.size if min_object_px is None else min_object_px
    keep = np.flatnonzero(sizes >= smallest) + 1
    mask = np.isin(labels, keep)
  return mask
