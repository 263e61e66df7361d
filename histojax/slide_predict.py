"""`--mode=predict` on whole-slide images, one slide or a cohort, streaming in bounded memory.

  python launch.py --mode=predict --workdir=W --input=SLIDE|FOLDER|CSV --output=DIR \
      [--mpp=0.25] [--shard=I/N]

Each slide is read at the model's pixel size (W's `data.mpp / data.scale`): from the pyramid
level nearest to it, resampled (antialiased bilinear), so a 40x slide is predicted at the
scale the model was trained at. Tissue is found on a thumbnail (Otsu on saturation,
histojax/data/sources/slides.py); only windows over tissue are predicted, and pixels off
the tissue mask are background. The slide is cut
into `inference.slide_tile`² tiles of the model's pixels; each tile is predicted with a margin
of (window - stride) px, so its windows are exactly the windows of one sliding window over the
whole slide that touch it (seams cost nothing; edge windows are computed by both neighbours).
Memory holds one tile, not the slide.

Outputs, DIR/<stem>...: `_mask.tif` (pyramidal label TIFF at the model's pixel size, values =
class indices of DIR/classes.json), `.geojson` (QuPath objects in the slide's level-0 pixels;
objects cut by tile edges merged), `_overlay.png` (thumbnail with the predicted contours),
`_tissue.png` (the tissue mask on the thumbnail), `.summary.json` (the slide's row). Every file
is written under a temporary name and renamed when complete; the summary comes last, and a
slide that has it is skipped on re-run. `slides.csv` merges every slide's row (and the failed
ones, with their error) and is rewritten by each run, so shards (`--shard=I/N`: every N-th
slide from the I-th, I from 0) never append to one file.
"""
import csv
import json
import logging
import math
import os
import pathlib
import sys
import time

import numpy as np
from PIL import Image
import tqdm

from histojax import export, overlay, slide_export
from histojax import workdir as workdir_lib
from histojax.data.sources import slides
from histojax.metrics import objects

THUMBNAIL_SIDE = 2048   # tissue detection and the overlay
FAR = 4.0               # read level this many times finer or coarser than the model: warn
LOG_EVERY_S = 60        # progress lines when stderr is not a terminal
OUTPUTS = (('tissue', '_tissue.png'), ('overlay', '_overlay.png'), ('geojson', '.geojson'),
           ('mask', '_mask.tif'), ('summary', '.summary.json'))


def tiling(window, overlap, tile):
  """(tile side, (margin before: rows, cols), (margin after: rows, cols)). The tile is a whole
  number of strides (and of 16 px, TIFF tiles); the margins make a tile's windows exactly the
  windows of one sliding window over the slide (starts k * stride) that touch it: before, the
  strides a window reaches back; after, window - stride."""
  strides = [max(int(w * (1 - overlap)), 1) for w in window]
  step = math.lcm(*strides, 16)
  before = tuple((-(-w // s) - 1) * s for w, s in zip(window, strides))
  after = tuple(w - s for w, s in zip(window, strides))
  return step * max(1, round(int(tile) / step)), before, after


def _drop_small_interior(labels, min_size, inner_edges):
  """Components below `min_size` px removed unless they touch an inner tile edge (their
  object may go on in the next tile; the GeoJSON judges the merged object)."""
  if not min_size:
    return labels
  comp = objects.label_objects(labels > 0)
  sizes = np.bincount(comp.ravel())
  small = sizes < min_size
  small[0] = False
  top, bottom, left, right = inner_edges
  for edge, on in ((comp[0], top), (comp[-1], bottom), (comp[:, 0], left), (comp[:, -1], right)):
    if on:
      small[np.unique(edge)] = False
  return np.where(small[comp], 0, labels).astype(labels.dtype)


class SlideRun:
  """What every slide of one predict run shares: the model's region predictor and settings."""

  def __init__(self, predictor, config, class_names, postprocess, options, output_dir, *,
               object_type, scale):
    self.predictor, self.class_names = predictor, list(class_names)
    self.object_type, self.options, self.output_dir = object_type, options, output_dir
    if not config.data.mpp:
      raise slides.SlideError(
          'this run records no training pixel size (config key data.mpp): pass '
          '--config.data.mpp=<µm per pixel of its training images> to predict slides.')
    self.model_mpp = float(config.data.mpp) / float(config.data.scale)
    if not (config.data.get('augment') or {}).get('glass_edge'):
      logging.warning(  # a plain GlaS model: stitched Dice 0.872 vs 0.916 (BENCHMARKS.md)
          'This model never saw glass beside tissue in training (data.augment.glass_edge is '
          'off): it may miss objects at tissue edges. To train for slides: '
          'configs/warwick_unet.py:cpu,slides, or data.augment.glass_edge=0.3.')
    self.tiling = tiling(tuple(config.inference.window), config.inference.overlap,
                         config.inference.slide_tile)
    # object_min_size was chosen on full-resolution labels; the model's pixels are 1/scale.
    self.min_size = int(round(postprocess.get('object_min_size', 0) * scale ** 2))

  def predict(self, path, name, stem):
    """Predicts one slide into DIR/<stem>*; returns its summary row. Raises SlideError or
    OSError naming the slide; no output is left under a final name then."""
    final = {key: self.output_dir / f'{stem}{suffix}' for key, suffix in OUTPUTS}
    temp = {key: p.with_name(f'.{p.name}.tmp') for key, p in final.items()}
    temp['level0'] = self.output_dir / f'.{stem}_mask.level0.tmp'
    stitcher = None
    try:
      start = time.perf_counter()
      with slides.open_slide(path, mpp=self.options.get('microns_per_pixel')) as slide:
        view = slides.View(slide, self.model_mpp)
        if not 1 / FAR <= view.level_factor <= FAR:
          logging.warning('%s: read at %.3f µm/px, %.1fx the model\'s %.3f µm/px: a wrong '
                          'pixel size (%s) or a model for another magnification?', path,
                          slide.level_mpp(view.level), view.level_factor,
                          self.model_mpp, slide.mpp_source)
        thumb, tissue, per_px = view.tissue(THUMBNAIL_SIDE)
        if not tissue.any():
          raise slides.SlideError(f'{path}: no tissue found on its thumbnail (blank or '
                                  'background-only slide); nothing predicted.')
        Image.fromarray(tissue.astype(np.uint8) * 255).save(temp['tissue'], format='PNG')
        thumb_labels = np.zeros(tissue.shape, np.uint8)
        stitcher = slide_export.ObjectStitcher(
            temp['geojson'], self.class_names, object_type=self.object_type,
            scale=view.factor, label_mpp=self.model_mpp, min_size=self.min_size)
        counts = {'tiles': 0, 'tiles_with_tissue': 0}
        blocks = self._tiles(view, tissue, per_px, thumb_labels, stitcher, counts, name)
        slide_export.write_level(temp['level0'], blocks, view.shape, self.tiling[0],
                                 self.model_mpp)
        totals = stitcher.finish()
        slide_export.build_pyramid(temp['level0'], temp['mask'], view.shape, self.model_mpp)
        picture = overlay.figure(thumb, thumb_labels, self.class_names,
                                 title=f'{name}: prediction')
        Image.fromarray(picture).save(temp['overlay'], format='PNG')
        seconds = time.perf_counter() - start
        tissue_mpx = float(tissue.sum()) * (view.factor / per_px) ** 2 / 1e6  # level-0 px
        row = {'slide': name, 'status': 'ok', 'width': slide.dimensions[0][0],
               'height': slide.dimensions[0][1], 'mpp': round(slide.mpp, 5),
               'mpp_source': slide.mpp_source, 'level': view.level,
               'model_mpp': round(self.model_mpp, 5), **counts,
               'tissue_mm2': round(tissue_mpx * slide.mpp ** 2, 4)}
        for cls_name, (count, area) in totals.items():
          row[f'{cls_name}_objects'] = count
          row[f'{cls_name}_area_mm2'] = round(area / 1e6, 5)
        row.update(seconds=round(seconds, 2),
                   tissue_mpx_per_s=round(tissue_mpx / max(seconds, 1e-9), 3))
      workdir_lib.write_json_atomic(temp['summary'], row)
      renamed = []
      try:
        for key, _ in OUTPUTS:  # the summary last: its presence means the slide is complete
          os.replace(temp[key], final[key])
          renamed.append(final[key])
      except OSError:
        for p in renamed:
          p.unlink(missing_ok=True)
        raise
      (self.output_dir / f'{stem}.failed.json').unlink(missing_ok=True)
      return row
    finally:
      if stitcher is not None:
        stitcher.close()
      for p in temp.values():
        p.unlink(missing_ok=True)

  def _tiles(self, view, tissue, per_model_px, thumb_labels, stitcher, counts, name):
    """Yields the label tiles of level 0 in row-major order, predicting as it goes."""
    height, width = view.shape
    t, (mh, mw), (ah, aw) = self.tiling
    thumb_rows = np.floor((np.arange(thumb_labels.shape[0]) + 0.5) / per_model_px).astype(int)
    thumb_cols = np.floor((np.arange(thumb_labels.shape[1]) + 0.5) / per_model_px).astype(int)
    origins = [(y, x) for y in range(0, height, t) for x in range(0, width, t)]
    bar = tqdm.tqdm(origins, desc=name, unit='tile', leave=False,
                    disable=not sys.stderr.isatty())
    start, done_px = time.perf_counter(), 0
    logged = start
    for i, (y, x) in enumerate(bar):
      h, w = min(t, height - y), min(t, width - x)
      inner = (y > 0, y + t < height, x > 0, x + t < width)
      keep = view.tissue_crop(tissue, per_model_px, y - mh, x - mw, t + mh + ah, t + mw + aw)
      probs = None
      if keep.any():
        region = view.read(y - mh, x - mw, t + mh + ah, t + mw + aw)
        probs = self.predictor(region, keep=keep)
      counts['tiles'] += 1
      if probs is None:
        labels = np.zeros((h, w), np.uint8)
      else:
        counts['tiles_with_tissue'] += 1
        probs = probs[mh:mh + h, mw:mw + w]
        labels = np.argmax(probs, -1).astype(np.uint8)
        # Off the tissue mask is background: a window over a tissue edge sees glass too, and
        # glass looks like a gland's lumen.
        labels[~keep[mh:mh + h, mw:mw + w]] = 0
        labels = _drop_small_interior(labels, self.min_size, inner)
      stitcher.add(labels, probs, y, x, inner)
      rows = np.flatnonzero((thumb_rows >= y) & (thumb_rows < y + h))
      cols = np.flatnonzero((thumb_cols >= x) & (thumb_cols < x + w))
      if rows.size and cols.size:
        thumb_labels[np.ix_(rows, cols)] = labels[np.ix_(thumb_rows[rows] - y,
                                                         thumb_cols[cols] - x)]
      done_px += h * w * view.factor ** 2
      now = time.perf_counter()
      rate = f'{done_px / 1e6 / (now - start):.1f} Mpx/s'
      bar.set_postfix_str(rate)
      if bar.disable and now - logged > LOG_EVERY_S:  # a log file: a line now and then
        logging.info('%s: %d/%d tiles (%d with tissue), %s of the slide.', name, i + 1,
                     len(origins), counts['tiles_with_tissue'], rate)
        logged = now
      yield np.pad(labels, ((0, t - h), (0, t - w)))


def merge_rows(output_dir):
  """DIR/slides.csv from every slide's row (DIR/*.summary.json, then *.failed.json for slides
  with none), sorted by slide; written to a temporary name and renamed."""
  output_dir = pathlib.Path(output_dir)
  rows = {}
  for pattern in ('*.failed.json', '*.summary.json'):  # a success replaces a failure
    for path in sorted(output_dir.glob(pattern)):
      try:
        row = json.loads(path.read_text(encoding='utf-8'))
      except (OSError, ValueError) as e:
        logging.warning('Skipping unreadable slide row %s: %s', path, e)
        continue
      rows[row['slide']] = row
  if not rows:
    return None
  columns = []
  for row in rows.values():
    columns += [k for k in row if k not in columns]
  path = output_dir / 'slides.csv'
  tmp = output_dir / f'.slides.csv.{os.getpid()}.tmp'
  with open(tmp, 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for name in sorted(rows):
      writer.writerow(rows[name])
  os.replace(tmp, path)
  return path


def run_cohort(run, files, stems):
  """Predicts every slide not finished yet; returns the skipped ones with their reasons."""
  out = run.output_dir
  export.classes_json(run.class_names, out / 'classes.json')
  skipped, done = [], 0
  bar = tqdm.tqdm(list(zip(files, stems)), desc='slides', unit='slide',
                  disable=not sys.stderr.isatty())
  for (path, name), stem in bar:
    if (out / f'{stem}.summary.json').exists() and (out / f'{stem}_mask.tif').exists():
      logging.info('%s: finished in an earlier run (%s.summary.json); skipped.', name, stem)
      done += 1
      continue
    try:
      row = run.predict(path, name, stem)
    except Exception as e:  # pylint: disable=broad-except
      # One slide's failure (a damaged tile, a full disk, out of memory) must not stop the
      # cohort; Ctrl-C and SIGTERM (BaseException) still do.
      reason = str(e) if str(path) in str(e) else f'{path}: {type(e).__name__}: {e}'
      skipped.append(reason)
      logging.error('Slide failed: %s', reason)
      workdir_lib.write_json_atomic(out / f'{stem}.failed.json',
                                    {'slide': name, 'status': 'failed', 'error': reason})
      continue
    logging.info('%s: %dx%d px at %.3f µm/px (%s), %d of %d tiles with tissue, %.4g mm² of '
                 'tissue, %.1f s, %.2f Mpx/s of tissue.', name, row['width'], row['height'],
                 row['mpp'], row['mpp_source'], row['tiles_with_tissue'], row['tiles'],
                 row['tissue_mm2'], row['seconds'], row['tissue_mpx_per_s'])
  try:
    merged = merge_rows(out)
  except OSError as e:
    skipped.append(f'{out / "slides.csv"}: not written: {e}')
    merged = None
  logging.info('Slides: %d predicted, %d finished earlier, %d failed%s.',
               len(files) - done - len(skipped), done, len(skipped),
               f'; rows in {merged}' if merged else '')
  return skipped
