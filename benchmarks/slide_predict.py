r"""Whole-slide prediction: seconds per slide, Mpx/s of tissue and peak RSS for slides of growing
size, and the Dice of the stitched slide prediction against predicting its images one by one.

  python benchmarks/slide_predict.py --workdir=W --slides=/big/disk/slides --sides=10000,30000
  python benchmarks/slide_predict.py --workdir=W --slides=DIR --sides=10000 --dice
  python benchmarks/slide_predict.py --workdir=W --slides=DIR --sides=10000,30000,60000 --sparse=12

Slides are GlaS images (release pixel size 0.62005 µm/px) tiled onto a near-white canvas with
96 px of glass between them, written as JPEG-tiled (q90; `--tiles=zlib`: lossless) pyramidal
TIFFs with resolution tags, tile by tile: the canvas is never held whole. Level k holds each
image downsampled 2^k times with the antialiased bilinear filter of training
(histojax/data/resample.py), as a scanner's pyramid holds filtered, not decimated, levels.
`--dice`: the 10k² slide holds the 80 test images (testA + testB) once each; its predicted
label map (at the model's pixel size) is scored against the stitched truth, and the same images
predicted one by one (`--mode=predict` on a folder of them, the masks brought to the model's
pixel size by nearest neighbour) are scored the same way, and so are the images predicted one
by one each on GAP px of glass (the context an image's edges have on the slide, without its
tiles, level or neighbours: on-glass vs one by one is what glass at the image's edges costs).
Each prediction runs as its own `launch.py --mode=predict` process; its peak RSS comes from
wait4. Prints one JSON line per slide.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import tifffile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from histojax.data import resample  # pylint: disable=g-import-not-at-top,wrong-import-position
from histojax.data.sources import glas  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_string('workdir', None, 'A trained GlaS run (e.g. configs/warwick_unet.py:cpu).')
flags.DEFINE_string('slides', None, 'Folder for the generated slides and the outputs.')
flags.DEFINE_string('sides', '10000,30000', 'Slide sides (px) to build and predict.')
flags.DEFINE_bool('dice', False, 'Stitched vs per-image Dice on the 10k² test-image slide.')
flags.DEFINE_string('extra', '', 'Extra launch.py flags, comma-separated.')
flags.DEFINE_bool('build_only', False, 'Only write the slides.')
flags.DEFINE_enum('tiles', 'jpeg', ['jpeg', 'zlib'], 'Slide tile compression: JPEG q90 (as '
                  'scanners write) or lossless zlib (the source pixels exactly).')
flags.DEFINE_integer('sparse', 0, 'Only this many images, spread evenly over the slide (the '
                     'same tissue on every size: memory against slide size at equal work).')
FLAGS = flags.FLAGS
GAP, TILE, BACKGROUND = 96, 512, 246
COMPRESSION = {'jpeg': {'compression': 'jpeg', 'compressionargs': {'level': 90}},
               'zlib': {'compression': 'zlib'}}


class Layout:
  """Images on a grid of cells (image + GAP), cycling through `images` (one per cell, or
  only `len(images)` cells with `once`)."""

  def __init__(self, images, masks, side, once=False, sparse=0):
    self.images, self.masks, self.side, self.sparse = images, masks, side, sparse
    self._scaled = {}
    # Cells a multiple of 4 px: images start on whole pixels of levels 1 and 2 too.
    self.cell_h = -(-(max(i.shape[0] for i in images) + GAP) // 4) * 4
    self.cell_w = -(-(max(i.shape[1] for i in images) + GAP) // 4) * 4
    self.columns = (side - GAP) // self.cell_w
    rows = (side - GAP) // self.cell_h
    self.cells = self.columns * rows
    self.count = min(len(images), self.cells) if once else self.cells
    if sparse:
      self.count = min(sparse, self.cells)

  def boxes(self):
    step = self.cells // self.count if self.sparse else 1
    for i in range(self.count):
      k = i * step
      y = GAP + (k // self.columns) * self.cell_h
      x = GAP + (k % self.columns) * self.cell_w
      yield i % len(self.images), x, y

  def scaled(self, i, scale):
    key = (i, scale)
    if key not in self._scaled:
      self._scaled[key] = resample.image(self.images[i], 1 / scale)
    return self._scaled[key]

  def region(self, y0, x0, h, w, scale=1):
    """The canvas at 1/scale, rows y0.., columns x0.. of that level."""
    out = np.full((h, w, 3), BACKGROUND, np.uint8)
    for i, x, y in self.boxes():
      src = self.scaled(i, scale)
      x, y = x // scale, y // scale
      top, left = max(y, y0), max(x, x0)
      bottom, right = min(y + src.shape[0], y0 + h), min(x + src.shape[1], x0 + w)
      if bottom > top and right > left:
        out[top - y0:bottom - y0, left - x0:right - x0] = src[top - y:bottom - y,
                                                            left - x:right - x]
    return out


def write_slide(path, layout):
  """A pyramidal JPEG-tiled TIFF of the layout, one tile at a time."""
  with tifffile.TiffWriter(path, bigtiff=True) as tif:
    scale = 1
    while True:
      side = -(-layout.side // scale)
      per_cm = 1e4 / (glas.MPP * scale)
      tiles = (layout.region(y, x, TILE, TILE, scale) for y in range(0, side, TILE)
               for x in range(0, side, TILE))
      tif.write(tiles, shape=(side, side, 3), dtype=np.uint8, tile=(TILE, TILE),
                photometric='rgb', **COMPRESSION[FLAGS.tiles],
                subfiletype=0 if scale == 1 else 1, resolution=(per_cm, per_cm),
                resolutionunit='CENTIMETER', metadata=None)
      scale *= 2
      if side // 2 < TILE:
        break


def run_predict(inputs, output, extra=()):
  """(seconds, peak RSS in MiB, log text) of one `launch.py --mode=predict` process."""
  log = pathlib.Path(output).with_suffix('.log')
  pathlib.Path(output).mkdir(parents=True, exist_ok=True)
  with open(log, 'w') as f:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / 'launch.py'), '--mode=predict',
                             f'--workdir={FLAGS.workdir}', f'--input={inputs}',
                             f'--output={output}', *extra], cwd=ROOT, stdout=f,
                            stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
  text = log.read_text()
  if os.waitstatus_to_exitcode(status):
    raise SystemExit(f'predict failed ({log}):\n{text[-3000:]}')
  return seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, text


def dice(pred, true):
  pred, true = pred > 0, true > 0
  return 2 * np.sum(pred & true) / max(np.sum(pred) + np.sum(true), 1)


def main(_):
  out = pathlib.Path(FLAGS.slides)
  out.mkdir(parents=True, exist_ok=True)
  extra = [e for e in FLAGS.extra.split(',') if e]
  records = glas.records()
  chosen = [r for r in records if r.split != 'train'] if FLAGS.dice else records
  images = [np.asarray(Image.open(r.image_path).convert('RGB')) for r in chosen]
  masks = [(np.asarray(Image.open(r.mask_path)) > 0).astype(np.uint8) for r in chosen]
  for side in map(int, FLAGS.sides.split(',')):
    layout = Layout(images, masks, side, once=FLAGS.dice, sparse=FLAGS.sparse)
    kind = '_test' if FLAGS.dice else f'_sparse{FLAGS.sparse}' if FLAGS.sparse else ''
    kind += '_zlib' if FLAGS.tiles == 'zlib' else ''
    slide = out / f'slide_{side}{kind}.tif'
    if not slide.exists():
      t0 = time.perf_counter()
      write_slide(slide.with_suffix('.tmp.tif'), layout)
      slide.with_suffix('.tmp.tif').rename(slide)
      print(f'# wrote {slide} ({slide.stat().st_size / 2**20:.0f} MiB) in '
            f'{time.perf_counter() - t0:.0f} s', flush=True)
    if FLAGS.build_only:
      continue
    result = out / f'pred_{slide.stem}'
    if result.exists():  # a new measurement, not a re-run that skips the finished slide
      shutil.rmtree(result)
    seconds, rss, cpu, _ = run_predict(slide, result, extra)
    row = json.loads((result / f'{slide.stem}.summary.json').read_text())
    line = {'slide': slide.name, 'side': side, 'images': layout.count,
            'process_seconds': round(seconds, 1), 'cpu_seconds': round(cpu, 1),
            'peak_rss_mib': round(rss), **{k: row[k] for k in (
                'seconds', 'tissue_mm2', 'tissue_mpx_per_s', 'tiles', 'tiles_with_tissue',
                'gland_objects', 'model_mpp', 'level')}}
    if FLAGS.dice:
      labels = tifffile.imread(result / f'{slide.stem}_mask.tif', key=0)
      factor = row['model_mpp'] / row['mpp']
      folder = out / 'test_images'
      folder.mkdir(exist_ok=True)
      for r, image in zip(chosen, images):
        if not (folder / f'{r.name}.png').exists():
          Image.fromarray(image).save(folder / f'{r.name}.png')
      if not all((out / 'pred_images' / f'{r.name}_mask.png').exists() for r in chosen):
        run_predict(folder, out / 'pred_images', extra)  # the same model: done once
      # Each image alone on GAP px of glass: the context its edges have on the slide, without
      # the slide's tiles, pyramid level or neighbours (what seams and levels cost, apart).
      on_glass = out / 'test_images_on_glass'
      on_glass.mkdir(exist_ok=True)
      for r, image in zip(chosen, images):
        if not (on_glass / f'{r.name}.png').exists():
          padded = np.pad(image, ((GAP, GAP), (GAP, GAP), (0, 0)), constant_values=BACKGROUND)
          Image.fromarray(padded).save(on_glass / f'{r.name}.png')
      if not all((out / 'pred_on_glass' / f'{r.name}_mask.png').exists() for r in chosen):
        run_predict(on_glass, out / 'pred_on_glass', extra)
      stitched, single, glassed = [], [], []
      for (i, x, y), r in zip(layout.boxes(), chosen):
        small = resample.mask(masks[i], 1 / factor)  # the truth at the model's pixel size
        h, w = small.shape
        top, left = round(y / factor), round(x / factor)
        stitched.append((labels[top:top + h, left:left + w], small))
        mine = np.asarray(Image.open(out / 'pred_images' / f'{r.name}_mask.png'))
        single.append((resample.mask(mine, 1 / factor), small))
        mine = np.asarray(Image.open(out / 'pred_on_glass' / f'{r.name}_mask.png'))
        mine = mine[GAP:GAP + masks[i].shape[0], GAP:GAP + masks[i].shape[1]]
        glassed.append((resample.mask(mine, 1 / factor), small))
      pooled = lambda pairs: dice(np.concatenate([p.ravel() for p, _ in pairs]),  # pylint: disable=g-long-lambda
                                  np.concatenate([t.ravel() for _, t in pairs]))
      line.update(dice_stitched=round(float(pooled(stitched)), 4),
                  dice_one_by_one=round(float(pooled(single)), 4),
                  dice_one_by_one_on_glass=round(float(pooled(glassed)), 4))
    print(json.dumps(line), flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['slides'])
  app.run(main)
