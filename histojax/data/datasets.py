"""The H&E datasets a config can name (`config.dataset`), built from the release readers
(histojax/data/sources) and the derivations (derive.py), split by group (splits.py), and stored
once as tfds array_record datasets (store.py).

| config.dataset   | examples                                              | split by        |
|------------------|-------------------------------------------------------|-----------------|
| glas             | whole image + gland instance mask                     | patient (val)   |
| crchisto_points  | whole image + disc mask (binary or types) + points    | image           |
| brecahad_points  | same, BreCaHAD release layout                         | image           |
| folder_seg       | images/ + masks/ or annotations/ (bring your own);    | image / slide   |
|                  | a whole slide's annotated regions                     |                 |
| crchisto_patches | PxP nucleus-centred crop + class                      | image           |
| glas_tiles       | PxP tile + benign/malignant                           | patient         |
| folder_tiles     | PxP tile + class folder (bring your own; A vs B as in | image           |
|                  | the original project)                                 |                 |
| csv_patches      | PxP patch + label from a `filename,label` CSV (the    | patch           |
|                  | original project's Kaggle layout; RGB or grayscale)   |                 |

GlaS keeps its official testA/testB; everything else carves train/val/test with
`config.data.fractions`, or, with `config.data.folds=K`, tests fold `data.fold` of K
group-disjoint folds (splits.group_kfold). Validation always comes from training images.

The stored datasets are keyed by a fingerprint of every input file a builder reads (images,
masks, .mat / JSON annotations, label CSVs, Grade.csv: content hashes), its settings and its
FORMAT version, so an edited input never reuses a stale build.
"""
import logging

import numpy as np

from histojax.data import build, derive, folder_seg, paths, pipeline, resample, splits, store
from histojax.data.build import Splits, carved


# ----------------------------------------------------------------------------- segmentation


def _glas(config):
  from histojax.data.sources import glas  # pylint: disable=g-import-not-at-top
  records = build.subsample(build.read_records(
      config, lambda skip: glas.records(skip_bad=skip), glas.load_image, glas.load_mask), config)
  by_split = {s: [r for r in records if r.split == s] for s in ('train', 'testA', 'testB')}

  def generate(split):
    for r in by_split[split]:
      yield {'image': glas.load_image(r), 'mask': glas.load_mask(r, instances=True)}, r.name

  stored, stems = store.prepare(
      'glas', build.fingerprint(config, build.input_files(records)), list(by_split), generate,
      {'image': ((None, None, 3), np.uint8), 'mask': ((None, None), np.int32)})
  train, val = splits.glas_val_split(records, config.data.val_fraction, config.seed)
  position = {r.name: i for i, r in enumerate(by_split['train'])}
  notes = glas.dataset_notes(records) + [
      f'Validation: {len(val)} GlaS training images of patients not in the training part '
      f'({len(train)} images).'] + [f'Skipped bad input: {s}' for s in records.skipped]
  info = {'num_classes': 2, 'class_names': ['background', 'gland'], 'notes': notes,
          'instance_masks': True}
  return Splits(
      build.Indexed(stored['train'], [position[r.name] for r in train],
                    cache=config.data.cache_train),
      build.Indexed(stored['train'], [position[r.name] for r in val], names=stems['train']),
      {part: build.Indexed(stored[part], range(len(stored[part])), names=stems[part])
       for part in ('testA', 'testB')}, info)


def _point_images(config):
  """(records, load_image, nuclei(record) -> (points, labels), class names, reader notes)."""
  if config.dataset == 'crchisto_points':
    from histojax.data.sources import crchisto  # pylint: disable=g-import-not-at-top
    records = build.read_records(config, lambda skip: crchisto.records(skip_bad=skip),
                                 crchisto.load_image)
    return (records, crchisto.load_image, lambda r: crchisto.nuclei(r)[:2],
            list(crchisto.CLASSES), crchisto.dataset_notes(records))
  from histojax.data.sources import brecahad  # pylint: disable=g-import-not-at-top
  root = config.data.root
  records = build.read_records(config, lambda skip: brecahad.records(root, skip_bad=skip),
                               brecahad.load_image)
  return (records, brecahad.load_image, lambda r: (r.points, r.labels),
          list(brecahad.CLASSES), list(records.notes))


def _points_seg(config):
  records, load_image, nuclei, classes, notes = _point_images(config)
  records = build.subsample(records, config)
  radius, types = config.data.radius, config.data.types
  merge = config.data.merge
  merge = dict(merge) if merge else None
  keep = build.configured_classes(config)  # e.g. BreCaHAD's nuclear classes only
  # Nuclei without a type: background (0), or IGNORE so the loss and pixel metrics skip them.
  untyped = derive.IGNORE if types and config.data.ignore_untyped else 0
  all_classes = classes
  classes = list(keep) if keep else classes
  _, merged = (derive.merge_classes(classes, merge) if types else (None, ['nucleus']))

  def generate(split):
    del split
    for r in records:
      image = load_image(r)
      points, labels = nuclei(r)
      labels = np.asarray(labels, np.int32)
      if keep:
        names = [all_classes[l] if l >= 0 else None for l in labels]
        chosen = np.array([n in keep for n in names], bool)
        points = np.asarray(points).reshape(-1, 2)[chosen]
        labels = np.array([keep.index(n) for n, c in zip(names, chosen) if c], np.int32)
      if types:
        mask, _ = derive.points_to_type_map(points, labels, image.shape[:2], classes, radius,
                                            merge, untyped=untyped)
        _, index = derive.merge_classes(classes, merge)
        new = [index.get(classes[l]) if l >= 0 else None for l in labels]
        labels = np.array([-1 if n is None else n for n in new], np.int32)
      else:
        mask = derive.points_to_binary_mask(points, image.shape[:2], radius).astype(np.int32)
      yield {'image': image, 'mask': mask,
             'points': np.asarray(points, np.float32).reshape(-1, 2), 'point_labels': labels
             }, r.name

  files = build.input_files(records)
  key = build.fingerprint(config, files, 'radius', 'types', 'merge', 'classes', 'ignore_untyped')
  stored, _ = store.prepare(
      config.dataset, key, ['examples'], generate,
      {'image': ((None, None, 3), np.uint8), 'mask': ((None, None), np.int32),
       'points': ((None, 2), np.float32), 'point_labels': ((None,), np.int32)})
  parts = build.split_by_group(stored['examples'], [r.group for r in records], None, config,
                               notes, cache_train=config.data.cache_train)
  names = ['background', *merged]
  notes = notes + [f'Skipped bad input: {s}' for s in records.skipped] + [
      f'Masks: discs of radius {radius} px around annotated nuclei '
      f'({"per-class type map" if types else "binary"}); split by image.']
  if untyped:
    notes.append('Nuclei without a type label are drawn as "ignore": they count in neither '
                 'the loss nor the pixel metrics (only typed nuclei are scored).')
  return carved(parts, names, notes, instance_masks=False, points=True)


# --------------------------------------------------------------------------- classification


def _crchisto_patches(config):
  from histojax.data.sources import crchisto  # pylint: disable=g-import-not-at-top
  records = build.subsample(build.read_records(
      config, lambda skip: crchisto.records(skip_bad=skip), crchisto.load_image), config)
  size = config.data.patch_size
  def generate(split):
    del split
    for i, r in enumerate(records):
      image = crchisto.load_image(r)
      points, labels, _ = crchisto.nuclei(r)
      typed = labels >= 0
      crops = derive.point_crops(image, points[typed], labels[typed], size)
      for crop, label, (x, y) in zip(crops['image'], crops['label'], crops['center']):
        yield {'image': crop, 'label': np.int32(label)}, [r.name, int(label), int(x), int(y)]

  stored, metas = store.prepare('crchisto_patches',
                         build.fingerprint(config, build.input_files(records), 'patch_size'),
                         ['examples'], generate,
                         {'image': ((size, size, 3), np.uint8), 'label': ((), np.int32)})
  groups, labels = zip(*[m[:2] for m in metas['examples']])
  # Figures name a crop by its source image and nucleus centre (caches built before the
  # centre was kept name the image only).
  names = [f'{m[0]} at x {m[2]}, y {m[3]}' if len(m) > 2 else m[0] for m in metas['examples']]
  notes = crchisto.dataset_notes(records) + [
      f'{len(groups)} typed nuclei as {size}x{size} crops centred on the nucleus (reflect-padded '
      'at image borders); split by source image.'] + [
          f'Skipped bad input: {s}' for s in records.skipped]
  parts = build.split_by_group(stored['examples'], groups, labels, config, notes, names=names)
  return carved(parts, list(crchisto.CLASSES), notes)


def _csv_patches(config):
  """The original project's Kaggle layout: equal-size patches in a folder, labels in a
  filename,label CSV."""
  from histojax.data.sources import folders  # pylint: disable=g-import-not-at-top
  size, channels = config.data.patch_size, config.data.channels
  class_names = []

  def list_records(skip_bad):
    records, names = folders.csv_labels(
        config.data.csv, config.data.images, classes=build.configured_classes(config),
        skip_bad=skip_bad, channels=channels)
    class_names.extend(names)
    return records
  records = build.subsample(build.read_records(
      config, list_records, lambda r: folders.load_image(r, channels)), config)

  def generate(split):
    del split
    for r in records:
      image = folders.load_image(r, channels)
      if image.shape[:2] != (size, size):
        raise paths.DataError(f'{r.image_path} is {image.shape[1]}x{image.shape[0]} px; every '
                              f'patch must be {size}x{size} (config key data.patch_size).')
      yield {'image': image, 'label': np.int32(r.label)}, [r.name, int(r.label)]

  # The CSV itself is an input: its labels are in the stored examples.
  stored, metas = store.prepare('csv_patches', build.fingerprint(
      config, build.input_files(records) + [config.data.csv], 'csv', 'patch_size', 'channels',
      'classes'),
      ['examples'], generate, {'image': ((size, size, channels), np.uint8),
                               'label': ((), np.int32)})
  groups, labels = zip(*metas['examples'])
  notes = [f'{len(groups)} labelled {size}x{size} patches from {config.data.csv}; the CSV names '
           'no source image or patient, so the split is by patch: patches cut from one slide '
           'can sit in train and test, and val/test scores may be optimistic.'] + [
               f'Skipped bad input: {s}' for s in records.skipped]
  parts = build.split_by_group(stored['examples'], groups, labels, config, notes)
  return carved(parts, class_names, notes)


def _tiles(config):
  """Whole images of a few classes → tiles; label = the image's class; split by group."""
  size = config.data.tile_size
  min_tissue = config.data.min_tissue
  # Magnification: whole images are downsampled (antialiased) before tiling, so that a tile
  # of `size` px covers size / scale px of the original image.
  scale = resample.check_scale(config.data.scale)
  if config.dataset == 'glas_tiles':
    from histojax.data.sources import glas  # pylint: disable=g-import-not-at-top
    records = build.subsample(build.read_records(
        config, lambda skip: glas.records(skip_bad=skip), glas.load_image), config)
    class_names = ['benign', 'malignant']
    images = [(r.name, r.patient, r.label, r.image_path, lambda r=r: glas.load_image(r))
              for r in records]
    # Tiles depend on the images and on Grade.csv (label, patient), not on the masks.
    inputs = [f for r in records for f in (r.image_path, r.grade_path)]
  else:
    from histojax.data.sources import folders  # pylint: disable=g-import-not-at-top
    class_names = []

    def list_records(skip_bad):
      records, names = folders.class_folders(
          config.data.root, classes=build.configured_classes(config), skip_bad=skip_bad)
      class_names.extend(names)
      return records
    records = build.read_records(config, list_records, folders.load_image)
    images = [(r.name, '', r.label, r.image_path, lambda r=r: folders.load_image(r))
              for r in records]
    inputs = build.input_files(records)
  from histojax.data.sources import slides  # pylint: disable=g-import-not-at-top

  def generate(split):
    del split
    for name, patient, label, path, load in images:
      if slides.is_whole_slide(path):  # tissue tiles read at the model's pixel size
        if not config.data.mpp:
          raise paths.DataError(f'{path} is a whole slide: set data.mpp (µm per pixel to cut '
                                'tiles at, before data.scale), e.g. --config.data.mpp=0.5.')
        tiles = (t for _, t in slides.tissue_tiles(
            path, size, config.data.mpp / scale, stride=config.data.tile_stride,
            min_tissue=min_tissue, slide_mpp=config.data.slide_mpp or None))
      else:
        tiles = derive.tile_image(resample.image(load(), scale), size,
                                  config.data.tile_stride, source=name,
                                  patient=patient, min_tissue=min_tissue)['image']
      for tile in tiles:
        yield {'image': tile, 'label': np.int32(label)}, [name, patient, int(label)]

  stored, metas = store.prepare(config.dataset, build.fingerprint(
      config, inputs, 'tile_size', 'tile_stride', 'min_tissue', 'scale', 'root',
      'classes', 'mpp', 'slide_mpp'), ['examples'], generate, {'image': ((size, size, 3), np.uint8),
                                      'label': ((), np.int32)})
  tiles_meta = metas['examples']
  groups = splits.group_keys([m[0] for m in tiles_meta], [m[1] for m in tiles_meta])
  labels = [m[2] for m in tiles_meta]
  at_scale = f' at {scale:g}x (each covers {size / scale:g} px of the original)' * (scale != 1)
  group = 'patient' if images[0][1] else 'image'
  notes = [f'{len(tiles_meta)} tiles of {size}x{size} px{at_scale} with tissue fraction >= '
           f'{min_tissue} from {len(images)} images; split by {group}.'] + [
               f'Skipped bad input: {s}' for s in records.skipped]
  # Each tile's source image, so that evaluation also scores whole images (mean tile
  # probability): image ids index `images`, the same in every split.
  image_index = {name: i for i, (name, *_) in enumerate(images)}
  image_id = np.array([image_index[m[0]] for m in tiles_meta], np.int32)
  parts = build.split_by_group(stored['examples'], groups, labels, config, notes,
                               fields={'image_id': image_id})
  return carved(parts, class_names, notes, num_images=len(images))


BUILDERS = {
    'glas': _glas,
    'crchisto_points': _points_seg,
    'brecahad_points': _points_seg,
    'folder_seg': folder_seg.load,
    'crchisto_patches': _crchisto_patches,
    'glas_tiles': _tiles,
    'folder_tiles': _tiles,
    'csv_patches': _csv_patches,
}


def _build(config) -> Splits:
  if config.dataset not in BUILDERS:
    raise paths.DataError(f'Unknown dataset {config.dataset!r} (config key: dataset); known: '
                          f'mnist, {", ".join(BUILDERS)}.')
  if config.data.folds and config.dataset == 'glas':
    raise ValueError('data.folds: dataset glas keeps its official testA/testB; group '
                     'cross-validation is for the datasets split by config.data.fractions.')
  result = BUILDERS[config.dataset](config)
  logging.info('%s: train %d, val %d, %s', config.dataset, len(result.train), len(result.val),
               ', '.join(f'{k} {len(v)}' for k, v in result.tests.items()))
  return result


# ----------------------------------------------------------------------------- registry


def holdout(arrays, size, seed):
  """Seeded random hold-out of `size` examples (for sets with no grouping, like MNIST)."""
  order = np.random.default_rng(seed).permutation(len(arrays['label']))
  keep, held = np.sort(order[size:]), np.sort(order[:size])
  return ({k: v[keep] for k, v in arrays.items()}, {k: v[held] for k, v in arrays.items()})


class Subset:
  """The first n examples of a source (smoke runs)."""

  def __init__(self, source, n):
    self.source, self.n = source, min(n, len(source))
    names = getattr(source, 'names', None)  # what figures call the examples
    self.names = None if names is None else names[:self.n]

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(i)
    return self.source[i]


def _subset(source, n):
  source = pipeline.as_source(source)
  return source if n is None else Subset(source, n)


def get_splits(config) -> Splits:
  """Builds train/val/test sources for `config.dataset`."""
  if config.dataset == 'mnist':
    if config.data.folds:
      raise ValueError('data.folds: mnist keeps its official test set; group cross-validation '
                       'is for the datasets split by config.data.fractions.')
    from histojax.data.sources import mnist  # pylint: disable=g-import-not-at-top
    tfds_dir = config.data.tfds_data_dir
    load = (lambda s: mnist.load_tfds(s, tfds_dir)) if tfds_dir else mnist.load
    train, val = holdout(load('train'), config.data.val_size, config.seed)
    splits = Splits(train, val, {'test': load('test')},
                    {'num_classes': 10, 'class_names': [str(i) for i in range(10)],
                     'notes': []})
  else:
    splits = _build(config)
  n_train, n_eval = config.data.max_train_examples, config.data.max_eval_examples
  return Splits(train=_subset(splits.train, n_train), val=_subset(splits.val, n_eval),
                tests={k: _subset(v, n_eval) for k, v in splits.tests.items()},
                info=splits.info)


def log_info(splits: Splits):
  for name, source in [('train', splits.train), ('val', splits.val), *splits.tests.items()]:
    logging.info('%s: %d examples', name, len(source))
  for note in splits.info.get('notes', []):
    logging.warning('%s', note)
