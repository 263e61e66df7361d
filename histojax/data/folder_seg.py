"""Bring-your-own segmentation folders as a dataset (`config.dataset = 'folder_seg'`): the
records of histojax/data/sources/folders.py (images + masks, or polygon annotations over images
or whole slides) stored once and split by image or slide, or as shipped in DIR/train + DIR/test.
"""
import numpy as np

from histojax.data import build, paths, splits, store


def _mask(record, k):
  from histojax.data.sources import folders  # pylint: disable=g-import-not-at-top
  mask = folders.load_mask(record).astype(np.int32)
  if mask.max(initial=0) >= k:
    raise paths.DataError(f'{record.mask_path} has label {mask.max()}, but num_classes is {k} '
                          '(labels 0..num_classes-1; config key: num_classes).')
  return mask


def _examples(config, records, k, instances):
  """(example, [name, image or slide stem]) of folder records: an image whole; a whole slide
  as its annotated regions (data.slide_region px at data.mpp). `instances`: masks are the
  annotations' instance maps (binary tasks read them as foreground > 0)."""
  from histojax.data.sources import annotations, folders  # pylint: disable=g-import-not-at-top
  for r in records:
    if r.whole_slide:
      if not config.data.mpp:
        raise paths.DataError(f'{r.image_path} is a whole slide: set data.mpp (µm per pixel '
                              'to read its annotated regions at), e.g. --config.data.mpp=0.5.')
      for name, image, labels, instance_map in folders.slide_regions(
          r, config.data.slide_region, config.data.mpp, config.data.slide_mpp or None):
        yield {'image': image, 'mask': instance_map if instances else labels}, [name, r.name]
    else:
      mask = (annotations.load(r.mask_path, (r.height, r.width), r.classes)[1] if instances
              else _mask(r, k))
      yield {'image': folders.load_image(r), 'mask': mask}, [r.name, r.name]


def load(config):
  """Bring-your-own segmentation folders (histojax/data/sources/folders.py): images + masks
  or polygon annotations (images or whole slides), split by image or slide, or as shipped
  in train/ + test/."""
  from histojax.data.sources import annotations, folders  # pylint: disable=g-import-not-at-top
  root, k = config.data.root, config.num_classes
  if not root or not k:
    raise ValueError("dataset 'folder_seg' needs data.root and num_classes (background "
                     'included), e.g. configs/warwick_unet.py:root=DIR,classes=2.')
  classes = build.configured_classes(config)
  if classes and len(classes) + 1 != k:
    raise ValueError(f'data.classes names {len(classes)} foreground classes {list(classes)}, '
                     f'but num_classes is {k} (background included): give {k - 1} names.')
  records = build.read_records(config, lambda skip: folders.segmentation(root, skip_bad=skip,
                                                                         classes=classes),
                               folders.load_image, folders.load_mask)
  # Polygons are objects: a binary task keeps them apart (object F1 / Dice / Hausdorff).
  instances = k == 2 and any(r.mask_path.suffix.lower() in annotations.SUFFIXES
                              for r in records)
  by_split = {s: [r for r in records if r.split == s] for s in
              (folders.FIXED_SPLITS if any(r.split for r in records) else ('',))}

  def generate(split):
    yield from _examples(config, by_split[split if split != 'examples' else ''], k,
                                instances)

  files = build.input_files(records)
  names = ['background', *(classes or [f'class{i}' for i in range(1, k)])]
  spec = {'image': ((None, None, 3), np.uint8), 'mask': ((None, None), np.int32)}
  with_slides = any(r.whole_slide for r in records)
  fingerprint = build.fingerprint(config, files, 'root', 'classes', *(
      ('mpp', 'slide_region', 'slide_mpp') if with_slides else ())) | {'num_classes': k}
  notes = [f'Bring-your-own segmentation data from {root}'] + [
      f'Skipped bad input: {s}' for s in records.skipped]
  if with_slides:
    notes.append(f'Whole slides: the {config.data.slide_region}² px regions at '
                 f'{config.data.mpp:g} µm/px that touch an annotation; their unannotated '
                 'pixels are background (every object in them is taken to be annotated).')
  if instances:
    notes.append('Objects: each annotated polygon is one object.')
  info = {'instance_masks': instances}
  if '' not in by_split:
    return _fixed_split(config, by_split, fingerprint, spec, generate, names, notes, info)
  stored, metas = store.prepare('folder_seg', fingerprint, ['examples'], generate, spec)
  notes[0] += '; split by image (a slide\'s regions stay together).'
  parts = build.split_by_group(stored['examples'], [m[1] for m in metas['examples']], None,
                               config, notes, names=[m[0] for m in metas['examples']])
  return build.carved(parts, names, notes, **info)


def _fixed_split(config, by_split, fingerprint, spec, generate, names, notes, info):
  """DIR/train + DIR/test as shipped: the test images are the test split; validation is
  carved from train by image (data.fractions' val share of train + val)."""
  stored, metas = store.prepare('folder_seg', fingerprint, list(by_split), generate, spec)
  fractions = build.fractions(config)
  val_share = fractions['val'] / max(fractions['train'] + fractions['val'], 1e-9)
  carved = splits.group_split([m[1] for m in metas['train']], None,
                              {'train': 1 - val_share, 'val': val_share}, config.seed)
  notes[0] += (f' with its own split: {len(by_split["test"])} test images from test/; '
               f'validation: {len(set(metas["train"][i][1] for i in carved["val"]))} of the '
               f'{len(by_split["train"])} images of train/, by image.')
  info = {'num_classes': len(names), 'class_names': names, 'notes': notes, **info}
  stems = {s: [m[0] for m in metas[s]] for s in metas}
  return build.Splits(
      build.Indexed(stored['train'], carved['train'], cache=config.data.cache_train),
      build.Indexed(stored['train'], carved['val'], names=stems['train']),
      {'test': build.Indexed(stored['test'], range(len(stored['test'])), names=stems['test'])},
      info)
