"""`--mode=predict`: a trained workdir applied to new images.

  python launch.py --mode=predict --workdir=W --input=IMAGE|FOLDER|CSV --output=DIR \
      [--mpp=0.5] [--shard=I/N]

Whole slides among the inputs (vendor formats, OME-TIFF, tiled/pyramidal/huge TIFF:
slides.is_whole_slide) are predicted tile by tile by histojax/slide_predict.py (segmentation
runs); the rest, images, as below. `--shard=I/N` keeps every N-th input from the I-th.

Segmentation, for every image, any size (sliding window, the run's test-time augmentation,
and the post-processing its final report chose on val: W/postprocess.json):
DIR/<stem>_mask.png, a palette PNG whose pixel values are the class indices (DIR/classes.json:
index, name, colour); DIR/<stem>_overlay.png, class contours over the image with a legend
(histojax/overlay.py); DIR/<stem>.geojson, one QuPath object per predicted gland (annotation)
or nucleus (detection), traced along pixel edges in full-resolution pixel coordinates, with
area and mean probability; nuclei also DIR/<stem>_centroids.csv; with --save_probs
DIR/<stem>_probs.npy (float16 [H, W, C]); with --microns_per_pixel areas in µm² too.
Two inputs with one stem (a.png, a.tif) write a_png_*.png and a_tif_*.png.
Classification: DIR/predictions.csv with `filename,label` and one probability column per class
(the original project's Kaggle submission format); `filename` as the CSV lists it, else the file
name.
A CSV input lists images in its first column (header `filename` or none), relative to the
CSV's folder. Images must have the training patch size (no silent resizing: it would change
the magnification); channels are converted (RGB <-> grayscale).
Unreadable, wrong-size or oversized images (over PIL's decompression-bomb limit, about 179
Mpx: write those as tiled pyramidal TIFFs) are reported and skipped; files already written are never removed (a rerun into the same
DIR rewrites its outputs). Dot files (macOS `._*`, `.DS_Store`) in a folder are ignored.
With --config, its run-time settings (e.g. `--config.inference.tta=none`) apply.
"""
import collections
import csv
import logging
import os
import pathlib
import sys

import flax
import jax
import numpy as np
from PIL import Image
import tqdm

from histojax import checkpoint, errors, models, sharding, slide_predict, tasks
from histojax import workdir as workdir_lib
from histojax.data.sources import common, slides

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')


@flax.struct.dataclass
class Variables:
  params: dict
  batch_stats: dict


def list_inputs(input_path) -> list[tuple[pathlib.Path, str]]:
  """[(path, name to report it by)]: a CSV's own entries, else file names."""
  path = pathlib.Path(input_path)
  if path.is_dir():
    files = [(p, p.name) for p in sorted(path.iterdir())
             if p.name.lower().endswith(IMAGE_SUFFIXES + slides.SUFFIXES)
             and not p.name.startswith('.') and p.is_file()]
  elif path.suffix.lower() == '.csv':
    with open(path, newline='', encoding='utf-8') as f:
      rows = [r for r in csv.reader(f) if r]
    if rows and rows[0][0].strip().lower() in ('filename', 'file', 'image', 'path', 'id'):
      rows = rows[1:]
    files = [(path.parent / r[0].strip(), r[0].strip()) for r in rows]
  elif path.is_file():
    files = [(path, path.name)]
  else:
    raise errors.UserError(f'--input {path}: no such image, folder or CSV.')
  if not files:
    raise errors.UserError(f'--input {path}: no images found '
                           f'({", ".join(sorted(set(IMAGE_SUFFIXES + slides.SUFFIXES)))}).')
  return files


def parse_shard(text):
  """'I/N' → (I, N) with 0 <= I < N (a job array's index and size); None → (0, 1)."""
  if not text:
    return 0, 1
  try:
    index, count = (int(v) for v in str(text).split('/'))
  except ValueError:
    index, count = -1, 0
  if not 0 <= index < count:
    raise errors.UserError(f'--shard={text}: expected I/N with 0 <= I < N, e.g. '
                           '--shard=$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT (I from 0).')
  return index, count


def _check_writable(output_dir):
  try:
    output_dir.mkdir(parents=True, exist_ok=True)
    probe = output_dir / f'.write-test-{os.getpid()}'
    probe.write_bytes(b'')
    probe.unlink()
  except OSError as e:
    raise errors.UserError(f'--output {output_dir}: cannot write there ({e.strerror or e}).'
                           ) from e


def _output_stems(files):
  """Output name per input: its stem, or (where stems collide) its name with . and / as _."""
  stems = collections.Counter(p.stem for p, _ in files)
  return [p.stem if stems[p.stem] == 1 else name.replace('/', '_').replace('.', '_')
          for p, name in files]


def _read(path, channels, size=None):
  try:
    image = Image.open(path)
  except Image.DecompressionBombError as e:
    raise ValueError(f'too large to decode whole (over {slides.FLAT_MAX_PIXELS / 1e6:.0f} '
                     'Mpx, PIL\'s limit); write it as a tiled pyramidal TIFF, which is read '
                     'by region (e.g. vips tiffsave IN OUT.tif --tile --pyramid '
                     '--compression=jpeg)') from e
  with image:
    depth = common.bit_depth(path, image)
    if depth > 8 and image.mode in ('RGB', 'RGBA', 'L', 'P'):
      raise ValueError(f'{depth} bits per channel, which PIL reads as '
                       '8-bit keeping only the high byte; convert it to 8-bit first')
    image.load()
    if size is not None and image.size != (size[1], size[0]):
      raise ValueError(f'{image.size[0]}x{image.size[1]} px, but the model was trained on '
                       f'{size[1]}x{size[0]} patches; crop or tile it to that size first')
    image = image.convert('L' if channels == 1 else 'RGB')
    array = np.asarray(image, np.uint8)
  return array[..., None] if channels == 1 else array


def run(workdir, input_path, output_dir, config=None, options=None):
  """Predicts every input; returns the list of skipped inputs with their reasons. `options`:
  the predict flags (histojax/tasks/base.py Task.predict), defaults below."""
  options = {'save_probs': False, 'microns_per_pixel': None, 'shard': None, **(options or {})}
  shard = parse_shard(options.pop('shard'))
  mpp = options['microns_per_pixel']
  if mpp is not None and not (np.isfinite(mpp) and mpp > 0):
    raise errors.UserError(f'--microns_per_pixel={mpp}: the pixel size must be a positive '
                           'number of µm (e.g. 0.5 at 20x on many scanners).')
  workdir, output_dir = pathlib.Path(workdir), pathlib.Path(output_dir)
  config_file, info_file = workdir / 'config.json', workdir / 'dataset_info.json'
  for f in (config_file, info_file):
    if not f.exists():
      raise errors.WorkdirError(f'{f} not found: --workdir must be a histojax training run.')
  config = (workdir_lib.saved_config(workdir) if config is None
            else workdir_lib.accept_config(workdir, config, 'predict'))
  info = workdir_lib.read_json(info_file, 'dataset info')
  files = list_inputs(input_path)
  stems = _output_stems(files)
  if shard != (0, 1):  # every N-th input from the I-th: a job array spreads a cohort
    files, stems = files[shard[0]::shard[1]], stems[shard[0]::shard[1]]
    logging.info('Shard %d/%d: %d inputs.', *shard, len(files))
  whole_slide = [slides.is_whole_slide(p) for p, _ in files]
  slide_files = [(f, s) for f, s, w in zip(files, stems, whole_slide) if w]
  files = [f for f, w in zip(files, whole_slide) if not w]
  stems = [s for s, w in zip(stems, whole_slide) if not w]
  _check_writable(output_dir)

  task = tasks.get_task(config, info)
  model = models.get_model(config, task.out_channels)
  mesh = sharding.make_mesh(config)
  saved = checkpoint.load_variables(workdir)  # logs which checkpoint step it loaded
  variables = jax.device_put(Variables(saved['params'], saved['batch_stats']),
                             sharding.replicated(mesh))
  settings_file = workdir / 'postprocess.json'
  postprocess = (workdir_lib.read_json(settings_file, 'post-processing choice')
                 if settings_file.exists() else {})
  if postprocess:
    logging.info('Post-processing chosen on val (%s): %s', settings_file, postprocess)
  channels, size = task.predict_reads(info)
  skipped = []
  if slide_files:
    skipped += _predict_slides(task, model, variables, mesh, config, slide_files, output_dir,
                               postprocess, options)
  if not files:
    return skipped

  def readable():
    """(name, output stem, image) of every input that reads; the others are skipped."""
    # No bar in log files: tqdm's carriage returns and escape codes only clutter them.
    bar = tqdm.tqdm(stems, desc='predict', unit='image',
                    disable=not sys.stderr.isatty())
    for (path, name), stem in zip(files, bar):
      try:
        image = _read(path, channels, size)
      except (OSError, ValueError) as e:
        skipped.append(f'{path}: {e}')
        logging.warning('Skipping unreadable input %s: %s', path, e)
        continue
      yield name, stem, image

  skipped_slides = len(skipped)
  task.predict(model, variables, mesh, readable(), output_dir, postprocess, options)
  skipped_images = len(skipped) - skipped_slides
  logging.info('Predicted %d of %d images into %s; skipped %d.', len(files) - skipped_images,
               len(files), output_dir, skipped_images)
  return skipped


def _predict_slides(task, model, variables, mesh, config, slide_files, output_dir,
                    postprocess, options):
  """Whole slides (histojax/slide_predict.py); returns the skipped ones with reasons."""
  predictor = task.region_predictor(model, variables, mesh)
  names = ', '.join(name for (_, name), _ in slide_files[:3])
  if predictor is None:
    reason = (f'{names}{" ..." if len(slide_files) > 3 else ""}: whole slides are predicted by '
              f'segmentation runs; this is a {config.task} run.')
    logging.error('Skipping %d slides: %s', len(slide_files), reason)
    return [reason]
  try:
    run = slide_predict.SlideRun(predictor, config, task.class_names, postprocess, options,
                                 output_dir, object_type=task.object_type,
                                 scale=float(config.data.scale))
  except slides.SlideError as e:
    raise errors.UserError(f'{names}: {e}') from e
  files, stems = zip(*slide_files)
  return slide_predict.run_cohort(run, list(files), list(stems))
