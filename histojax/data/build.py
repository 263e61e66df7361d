"""What every dataset builder (histojax/data/datasets.py) shares: record lists read with
optional skipping of bad files, the cache fingerprint, group-aware splits and the indexed
views of a stored dataset."""
import dataclasses

import numpy as np

from histojax.data import splits, store


@dataclasses.dataclass
class Splits:
  """Random-access sources of example dicts. `tests` maps test-part names (MNIST: 'test';
  GlaS: 'testA', 'testB') to sources; only the final report reads them."""
  train: object
  val: object
  tests: dict
  info: dict  # {'num_classes': int, 'class_names': [...], 'notes': [...], ...}


def carved(parts, class_names, notes, **info) -> Splits:
  """The Splits of a dataset whose train/val/test were carved by build.split_by_group; `info`
  adds the task hints (instance_masks, points, num_images)."""
  info = {'num_classes': len(class_names), 'class_names': list(class_names), 'notes': notes,
          **info}
  return Splits(parts['train'], parts['val'], {'test': parts['test']}, info)


class Indexed:
  """Examples `indices` of a source, in that order. With cache=True each process keeps the
  decoded examples it has read (whole training images: many crops are cut from each, and
  decoding dominates the input pipeline otherwise)."""

  def __init__(self, source, indices, cache=False, fields=None, names=None):
    self.source, self.indices = source, np.asarray(indices, np.int64)
    # What figures call example i (its source image): names[j] belongs to source example j.
    self.names = None if names is None else [str(names[int(j)]) for j in self.indices]
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


def subsample(records, config):
  """Every k-th source image, when config.data.max_source_images is set (smoke runs): a tiny
  derived dataset that still spans patients and classes."""
  n = config.data.max_source_images
  if not n or len(records) <= n:
    return records
  step = -(-len(records) // n)
  kept = type(records)(records[::step])
  for attr in ('skipped', 'notes'):
    if hasattr(records, attr):
      setattr(kept, attr, getattr(records, attr))
  return kept


def read_records(config, list_records, *loaders):
  """list_records(skip_bad) -> RecordList; with data.skip_bad every record is also decoded
  now by `loaders`, so a truncated or corrupt file (listing reads headers only) is skipped
  and counted instead of stopping the dataset build half-way."""
  skip_bad = config.data.skip_bad
  records = list_records(skip_bad)
  if not skip_bad:
    return records
  from histojax.data.sources import common  # pylint: disable=g-import-not-at-top
  bad = common.BadItems(True, 'decoding')
  kept = [r for r in records if bad.run(lambda r: [load(r) for load in loaders], r)]
  return type(records)(kept, records.skipped + bad.messages, records.notes)


def fractions(config):
  return dict(config.data.fractions)


def configured_classes(config):
  """config.data.classes as a tuple, or None. `--config.data.classes=A,B` arrives as the one
  string 'A,B' (and a config argument may use A+B): such a string is split."""
  classes = config.data.classes
  if not classes:
    return None
  if isinstance(classes, str):
    classes = (classes,)
  if len(classes) == 1 and any(sep in classes[0] for sep in ',+'):
    classes = [c for c in classes[0].replace('+', ',').split(',') if c.strip()]
  return tuple(str(c).strip() for c in classes)


# Bump a builder's version when its examples change for the same inputs and settings, so that
# datasets stored by an older histojax are rebuilt instead of reused.
FORMAT = {'glas': 2, 'crchisto_points': 2, 'brecahad_points': 2, 'folder_seg': 3,
          'crchisto_patches': 2, 'glas_tiles': 2, 'folder_tiles': 2, 'csv_patches': 2}


def input_files(records):
  """Every file the records were read from: image, mask, annotations, Grade.csv."""
  files = []
  for r in records:
    for attr in ('image_path', 'mask_path', 'json_path', 'grade_path'):
      if getattr(r, attr, None) is not None:
        files.append(getattr(r, attr))
    files.extend(getattr(r, 'mat_paths', ()))
  return files


def fingerprint(config, files, *keys):
  """Cache key: inputs (content-hashed), dataset, builder format version and settings."""
  settings = {k: configured_classes(config) if k == 'classes' else config.data[k] for k in keys}
  return {'files': store.fingerprint_files(files), 'dataset': config.dataset,
          'format': FORMAT[config.dataset],
          'max_source_images': config.data.max_source_images, **settings}


def split_by_group(stored, groups, labels, config, notes, cache_train=False, fields=None,
                   names=None):
  """Group-aware train/val/test over one stored split; a leaky split only on request.
  `names` (default: the groups) name each stored example in figures."""
  folds = config.data.folds or 0
  if folds and config.data.allow_leakage:
    raise ValueError('data.folds (group cross-validation) and data.allow_leakage exclude '
                     'each other.')
  if folds:
    fold = config.data.fold or 0
    split = splits.group_kfold(groups, labels, folds, fold, fractions(config), config.seed)
    splits.check_disjoint(split, groups)
    notes.append(f'Cross-validation: the test split is fold {fold} of {folds} group-disjoint '
                 f'folds ({len(set(groups))} groups); validation comes from the other folds. '
                 'Summarise the k runs with `python -m histojax.folds W_0 ... W_k-1`.')
  elif config.data.allow_leakage:
    split, note = splits.random_split(len(groups), fractions(config), config.seed,
                                      allow_leakage=True)
    notes.append(note)
  else:
    split = splits.group_split(groups, labels, fractions(config), config.seed)
    splits.check_disjoint(split, groups)
  return {name: Indexed(stored, idx, cache=cache_train and name == 'train', fields=fields,
                       names=groups if names is None else names) for name, idx in split.items()}
