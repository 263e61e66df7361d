"""The H&E datasets a config can name (`config.dataset`), built from the release readers
(histojax/data/sources) and the derivations (derive.py), split by group (splits.py), and stored
once as tfds array_record datasets (store.py).

| config.dataset   | examples                                              | split by        |
|------------------|-------------------------------------------------------|-----------------|
| glas             | whole image + gland instance mask                     | patient (val)   |
| crchisto_points  | whole image + disc mask (binary or types) + points    | image           |
| brecahad_points  | same, BreCaHAD release layout                         | image           |
| folder_seg       | images/ + masks/ (bring your own)                     | image           |
| crchisto_patches | PxP nucleus-centred crop + class                      | image           |
| glas_tiles       | PxP tile + benign/malignant                           | patient         |
| folder_tiles     | PxP tile + class folder (bring your own, seed's A/B)  | image           |
| csv_patches      | PxP patch + label from a `filename,label` CSV (seed's | patch           |
|                  | Kaggle nuclei layout; RGB or grayscale)               |                 |

GlaS keeps its official testA/testB; everything else carves train/val/test with
`config.data.fractions`, or, with `config.data.folds=K`, tests fold `data.fold` of K
group-disjoint folds (splits.group_kfold). Validation always comes from training images.

The stored datasets are keyed by a fingerprint of every input file a builder reads (images,
masks, .mat / JSON annotations, label CSVs, Grade.csv: content hashes), its settings and its
FORMAT version, so an edited input never reuses a stale build.
"""
import logging

import numpy as np

from histojax.data import derive, paths, pipeline, resample, splits, store


class Indexed:
  """Examples `indices` of a source, in that order. With cache=True each process keeps the
  decoded examples it has read (whole training images: many crops are cut from each, and
  decoding dominates the input pipeline otherwise)."""

  def __init__(self, source, indices, cache=False, fields=None):
    self.source, self.indices = source, np.asarray(indices, np.int64)
    self.cache = {} if cache else None
    # Extra per-example fields, indexed like `source` (e.g. the source image of each tile).
    self.fields = fields or {}

  def __len__(self):
    return len(self.indices)

  def _read(self, i):
    j = int(self.indices[i])
    example = self.source[j]
    return dict(example, **{k: v[j] for k, v in self.fields.items()}) if self.fields else example

  def __getitem__(self, i):
    if self.cache is None:
      return self._read(i)
    if i not in self.cache:
      self.cache[i] = self._read(i)
    return self.cache[i]

  def __getstate__(self):  # workers start with an empty cache
    return dict(self.__dict__, cache={} if self.cache is not None else None)


def _subsample(records, config):
  """Every k-th source image, when config.data.max_source_images is set (smoke runs): a tiny
  derived dataset that still spans patients and classes."""
  n = config.data.get('max_source_images')
  if not n or len(records) <= n:
    return records
  step = -(-len(records) // n)
  kept = type(records)(records[::step])
  for attr in ('skipped', 'notes'):
    if hasattr(records, attr):
      setattr(kept, attr, getattr(records, attr))
  return kept


def _records(config, list_records, *loaders):
  """list_records(skip_bad) -> RecordList; with data.skip_bad every record is also decoded
  now by `loaders`, so a truncated or corrupt file (listing reads headers only) is skipped
  and counted instead of stopping the dataset build half-way."""
  skip_bad = config.data.get('skip_bad', False)
  records = list_records(skip_bad)
  if not skip_bad:
    return records
  from histojax.data.sources import common  # pylint: disable=g-import-not-at-top
  bad = common.BadItems(True, 'decoding')
  kept = [r for r in records if bad.run(lambda r: [load(r) for load in loaders], r)]
  return type(records)(kept, records.skipped + bad.messages, records.notes)


def _fractions(config):
  return dict(config.data.get('fractions') or {'train': 0.7, 'val': 0.1, 'test': 0.2})


def _classes(config):
  """config.data.classes as a tuple, or None. `--config.data.classes=A,B` arrives as the one
  string 'A,B' (and a config argument may use A+B): such a string is split."""
  classes = config.data.get('classes')
  if not classes:
    return None
  if isinstance(classes, str):
    classes = (classes,)
  if len(classes) == 1 and any(sep in classes[0] for sep in ',+'):
    classes = [c for c in classes[0].replace('+', ',').split(',') if c.strip()]
  return tuple(str(c).strip() for c in classes)


# Bump a builder's version when its examples change for the same inputs and settings, so that
# datasets stored by an older histojax are rebuilt instead of reused.
FORMAT = {'glas': 2, 'crchisto_points': 2, 'brecahad_points': 2, 'folder_seg': 2,
          'crchisto_patches': 2, 'glas_tiles': 2, 'folder_tiles': 2, 'csv_patches': 2}


def _input_files(records):
  """Every file the records were read from: image, mask, annotations, Grade.csv."""
  files = []
  for r in records:
    for attr in ('image_path', 'mask_path', 'json_path', 'grade_path'):
      if getattr(r, attr, None) is not None:
        files.append(getattr(r, attr))
    files.extend(getattr(r, 'mat_paths', ()))
  return files


def _fingerprint(config, files, *keys):
  """Cache key: inputs (content-hashed), dataset, builder format version and settings."""
  settings = {k: _classes(config) if k == 'classes' else config.data.get(k) for k in keys}
  return {'files': store.fingerprint_files(files), 'dataset': config.dataset,
          'format': FORMAT[config.dataset],
          'max_source_images': config.data.get('max_source_images'), **settings}


def _split_by_group(stored, groups, labels, config, notes, cache_train=False, fields=None):
  """Group-aware train/val/test over one stored split; a leaky split only on request."""
  folds = config.data.get('folds') or 0
  if folds and config.data.get('allow_leakage'):
    raise ValueError('data.folds (group cross-validation) and data.allow_leakage exclude '
                     'each other.')
  if folds:
    fold = config.data.get('fold') or 0
    split = splits.group_kfold(groups, labels, folds, fold, _fractions(config), config.seed)
    splits.check_disjoint(split, groups)
    notes.append(f'Cross-validation: the test split is fold {fold} of {folds} group-disjoint '
                 f'folds ({len(set(groups))} groups); validation comes from the other folds. '
                 'Summarise the k runs with `python -m histojax.folds W_0 ... W_k-1`.')
  elif config.data.get('allow_leakage'):
    split, note = splits.random_split(len(groups), _fractions(config), config.seed,
                                      allow_leakage=True)
    notes.append(note)
  else:
    split = splits.group_split(groups, labels, _fractions(config), config.seed)
    splits.check_disjoint(split, groups)
  return {name: Indexed(stored, idx, cache=cache_train and name == 'train', fields=fields)
          for name, idx in split.items()}


# ----------------------------------------------------------------------------- segmentation


def _glas(config):
  from histojax.data.sources import glas  # pylint: disable=g-import-not-at-top
  records = _subsample(_records(config, lambda skip: glas.records(skip_bad=skip),
                                glas.load_image, glas.load_mask), config)
  by_split = {s: [r for r in records if r.split == s] for s in ('train', 'testA', 'testB')}

  def generate(split):
    for r in by_split[split]:
      yield {'image': glas.load_image(r), 'mask': glas.load_mask(r, instances=True)}, r.name

  stored, _ = store.prepare('glas', _fingerprint(config, _input_files(records)),
                         list(by_split), generate,
                         {'image': ((None, None, 3), np.uint8), 'mask': ((None, None), np.int32)})
  train, val = splits.glas_val_split(records, config.data.get('val_fraction', 0.2), config.seed)
  position = {r.name: i for i, r in enumerate(by_split['train'])}
  notes = glas.dataset_notes(records) + [
      f'Validation: {len(val)} GlaS training images of patients not in the training part '
      f'({len(train)} images).'] + [f'Skipped bad input: {s}' for s in records.skipped]
  info = {'num_classes': 2, 'class_names': ['background', 'gland'], 'notes': notes,
          'instance_masks': True}
  return pipeline.Splits(
      Indexed(stored['train'], [position[r.name] for r in train],
              cache=config.data.get('cache_train', True)),
      Indexed(stored['train'], [position[r.name] for r in val]),
      {'testA': stored['testA'], 'testB': stored['testB']}, info)


def _point_images(config):
  """(records, load_image, nuclei(record) -> (points, labels), class names, reader notes)."""
  if config.dataset == 'crchisto_points':
    from histojax.data.sources import crchisto  # pylint: disable=g-import-not-at-top
    records = _records(config, lambda skip: crchisto.records(skip_bad=skip), crchisto.load_image)
    return (records, crchisto.load_image, lambda r: crchisto.nuclei(r)[:2],
            list(crchisto.CLASSES), crchisto.dataset_notes(records))
  from histojax.data.sources import brecahad  # pylint: disable=g-import-not-at-top
  root = config.data.get('root')
  records = _records(config, lambda skip: brecahad.records(root, skip_bad=skip),
                     brecahad.load_image)
  return (records, brecahad.load_image, lambda r: (r.points, r.labels),
          list(brecahad.CLASSES), list(records.notes))


def _points_seg(config):
  records, load_image, nuclei, classes, notes = _point_images(config)
  records = _subsample(records, config)
  radius, types = config.data.get('radius', 5.0), config.data.get('types', False)
  merge = config.data.get('merge')
  merge = dict(merge) if merge else None
  keep = _classes(config)  # e.g. BreCaHAD's nuclear classes only
  # Nuclei without a type: background (0), or IGNORE so the loss and pixel metrics skip them.
  untyped = derive.IGNORE if types and config.data.get('ignore_untyped') else 0
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

  files = _input_files(records)
  stored, _ = store.prepare(config.dataset, _fingerprint(config, files, 'radius', 'types', 'merge',
                                                      'classes', 'ignore_untyped'),
                         ['examples'], generate,
                         {'image': ((None, None, 3), np.uint8), 'mask': ((None, None), np.int32),
                          'points': ((None, 2), np.float32), 'point_labels': ((None,), np.int32)})
  parts = _split_by_group(stored['examples'], [r.group for r in records], None, config, notes,
                          cache_train=config.data.get('cache_train', True))
  names = ['background', *merged]
  notes = notes + [f'Skipped bad input: {s}' for s in records.skipped] + [
      f'Masks: discs of radius {radius} px around annotated nuclei '
      f'({"per-class type map" if types else "binary"}); split by image.']
  if untyped:
    notes.append('Nuclei without a type label are drawn as "ignore": they count in neither '
                 'the loss nor the pixel metrics (only typed nuclei are scored).')
  info = {'num_classes': len(names), 'class_names': names, 'notes': notes,
          'instance_masks': False, 'points': True}
  return pipeline.Splits(parts['train'], parts['val'], {'test': parts['test']}, info)


def _folder_seg(config):
  from histojax.data.sources import folders  # pylint: disable=g-import-not-at-top
  root, k = config.data.root, config.get('num_classes')
  if not root or not k:
    raise ValueError("dataset 'folder_seg' needs data.root and num_classes (background "
                     'included), e.g. configs/warwick_unet.py:root=DIR,classes=2.')
  records = _records(config, lambda skip: folders.segmentation(root, skip_bad=skip),
                     folders.load_image, folders.load_mask)

  def generate(split):
    del split
    for r in records:
      mask = folders.load_mask(r).astype(np.int32)
      if mask.max(initial=0) >= k:
        raise paths.DataError(f'{r.mask_path} has label {mask.max()}, but num_classes is {k} '
                              '(labels 0..num_classes-1; config key: num_classes).')
      yield {'image': folders.load_image(r), 'mask': mask}, r.name

  files = _input_files(records)
  stored, _ = store.prepare('folder_seg', _fingerprint(config, files, 'root') | {'num_classes': k},
                         ['examples'], generate,
                         {'image': ((None, None, 3), np.uint8), 'mask': ((None, None), np.int32)})
  notes = [f'Bring-your-own segmentation data from {root}; split by image.'] + [
      f'Skipped bad input: {s}' for s in records.skipped]
  parts = _split_by_group(stored['examples'], [r.name for r in records], None, config, notes)
  names = ['background', *[f'class{i}' for i in range(1, k)]]
  info = {'num_classes': k, 'class_names': names, 'notes': notes, 'instance_masks': False}
  return pipeline.Splits(parts['train'], parts['val'], {'test': parts['test']}, info)


# --------------------------------------------------------------------------- classification


def _crchisto_patches(config):
  from histojax.data.sources import crchisto  # pylint: disable=g-import-not-at-top
  records = _subsample(_records(config, lambda skip: crchisto.records(skip_bad=skip),
                                crchisto.load_image), config)
  size = config.data.get('patch_size', 100)
  def generate(split):
    del split
    for i, r in enumerate(records):
      image = crchisto.load_image(r)
      points, labels, _ = crchisto.nuclei(r)
      typed = labels >= 0
      crops = derive.point_crops(image, points[typed], labels[typed], size)
      for crop, label in zip(crops['image'], crops['label']):
        yield {'image': crop, 'label': np.int32(label)}, [r.name, int(label)]

  stored, metas = store.prepare('crchisto_patches',
                         _fingerprint(config, _input_files(records), 'patch_size'),
                         ['examples'], generate,
                         {'image': ((size, size, 3), np.uint8), 'label': ((), np.int32)})
  groups, labels = zip(*metas['examples'])
  notes = crchisto.dataset_notes(records) + [
      f'{len(groups)} typed nuclei as {size}x{size} crops centred on the nucleus (reflect-padded '
      'at image borders); split by source image.'] + [
          f'Skipped bad input: {s}' for s in records.skipped]
  parts = _split_by_group(stored['examples'], groups, labels, config, notes)
  info = {'num_classes': 4, 'class_names': list(crchisto.CLASSES), 'notes': notes}
  return pipeline.Splits(parts['train'], parts['val'], {'test': parts['test']}, info)


def _csv_patches(config):
  """The seed's Kaggle layout: equal-size patches in a folder, labels in a filename,label CSV."""
  from histojax.data.sources import folders  # pylint: disable=g-import-not-at-top
  size, channels = config.data.get('patch_size', 100), config.data.get('channels', 3)
  class_names = []

  def list_records(skip_bad):
    records, _, names = folders.csv_labels(
        config.data.csv, config.data.images, classes=_classes(config),
        skip_bad=skip_bad, channels=channels)
    class_names.extend(names)
    return records
  records = _subsample(_records(config, list_records,
                                lambda r: folders.load_image(r, channels)), config)

  def generate(split):
    del split
    for r in records:
      image = folders.load_image(r, channels)
      if image.shape[:2] != (size, size):
        raise paths.DataError(f'{r.image_path} is {image.shape[1]}x{image.shape[0]} px; every '
                              f'patch must be {size}x{size} (config key data.patch_size).')
      yield {'image': image, 'label': np.int32(r.label)}, [r.name, int(r.label)]

  # The CSV itself is an input: its labels are in the stored examples.
  stored, metas = store.prepare('csv_patches', _fingerprint(
      config, _input_files(records) + [config.data.csv], 'csv', 'patch_size', 'channels',
      'classes'),
      ['examples'], generate, {'image': ((size, size, channels), np.uint8),
                               'label': ((), np.int32)})
  groups, labels = zip(*metas['examples'])
  notes = [f'{len(groups)} labelled {size}x{size} patches from {config.data.csv}; the CSV names '
           'no source image or patient, so the split is by patch: patches cut from one slide '
           'can sit in train and test, and val/test scores may be optimistic.'] + [
               f'Skipped bad input: {s}' for s in records.skipped]
  parts = _split_by_group(stored['examples'], groups, labels, config, notes)
  info = {'num_classes': len(class_names), 'class_names': class_names, 'notes': notes}
  return pipeline.Splits(parts['train'], parts['val'], {'test': parts['test']}, info)


def _tiles(config):
  """Whole images of a few classes → tiles; label = the image's class; split by group."""
  size = config.data.get('tile_size', 100)
  min_tissue = config.data.get('min_tissue', 0.5)
  # Magnification: whole images are downsampled (antialiased) before tiling, so that a tile
  # of `size` px covers size / scale px of the original image.
  scale = resample.check_scale(config.data.get('scale', 1.0))
  if config.dataset == 'glas_tiles':
    from histojax.data.sources import glas  # pylint: disable=g-import-not-at-top
    records = _subsample(_records(config, lambda skip: glas.records(skip_bad=skip),
                                  glas.load_image), config)
    class_names = ['benign', 'malignant']
    images = [(r.name, r.patient, r.label, r.image_path, lambda r=r: glas.load_image(r))
              for r in records]
    # Tiles depend on the images and on Grade.csv (label, patient), not on the masks.
    inputs = [f for r in records for f in (r.image_path, r.grade_path)]
  else:
    from histojax.data.sources import folders  # pylint: disable=g-import-not-at-top
    class_names = []

    def list_records(skip_bad):
      records, names = folders.class_folders(config.data.root, classes=_classes(config),
                                             skip_bad=skip_bad)
      class_names.extend(names)
      return records
    records = _records(config, list_records, folders.load_image)
    images = [(r.name, '', r.label, r.image_path, lambda r=r: folders.load_image(r))
              for r in records]
    inputs = _input_files(records)
  def generate(split):
    del split
    for name, patient, label, _, load in images:
      tiles = derive.tile_image(resample.image(load(), scale), size,
                                config.data.get('tile_stride'), source=name,
                                patient=patient, min_tissue=min_tissue)
      for tile in tiles['image']:
        yield {'image': tile, 'label': np.int32(label)}, [name, patient, int(label)]

  stored, metas = store.prepare(config.dataset, _fingerprint(
      config, inputs, 'tile_size', 'tile_stride', 'min_tissue', 'scale', 'root',
      'classes'), ['examples'], generate, {'image': ((size, size, 3), np.uint8),
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
  parts = _split_by_group(stored['examples'], groups, labels, config, notes,
                          fields={'image_id': image_id})
  info = {'num_classes': len(class_names), 'class_names': class_names, 'notes': notes,
          'num_images': len(images)}
  return pipeline.Splits(parts['train'], parts['val'], {'test': parts['test']}, info)


BUILDERS = {
    'glas': _glas,
    'crchisto_points': _points_seg,
    'brecahad_points': _points_seg,
    'folder_seg': _folder_seg,
    'crchisto_patches': _crchisto_patches,
    'glas_tiles': _tiles,
    'folder_tiles': _tiles,
    'csv_patches': _csv_patches,
}


def get_splits(config) -> pipeline.Splits:
  if config.dataset not in BUILDERS:
    raise paths.DataError(f'Unknown dataset {config.dataset!r} (config key: dataset); known: '
                          f'mnist, {", ".join(BUILDERS)}.')
  if config.data.get('folds') and config.dataset == 'glas':
    raise ValueError('data.folds: dataset glas keeps its official testA/testB; group '
                     'cross-validation is for the datasets split by config.data.fractions.')
  result = BUILDERS[config.dataset](config)
  logging.info('%s: train %d, val %d, %s', config.dataset, len(result.train), len(result.val),
               ', '.join(f'{k} {len(v)}' for k, v in result.tests.items()))
  return result
