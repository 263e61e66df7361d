"""Bring-your-own data in three plain layouts.

(a) segmentation: `<root>/images/<stem>.<ext>` + `<root>/masks/<stem>.<ext>` (same stems). Masks
    may be binary 0/255 (-> 0/1), label-valued gray (kept), or palette PNG (-> palette indices).
    Instead of masks/, polygon annotations `<root>/annotations/<stem>.geojson|.json|.xml`
    (QuPath GeoJSON, Aperio ImageScope XML; histojax/data/sources/annotations.py), their
    classes named by data.classes. images/ may hold whole slides (SVS, NDPI, MRXS, tiled
    TIFF...) annotated so, in level-0 pixels as QuPath and ImageScope write them: each becomes
    its data.slide_region² px regions at data.mpp that hold an annotated pixel (slide_regions).
    A fixed split, as public sets ship one: `<root>/train/{images,masks}` and
    `<root>/test/{images,masks}` (records carry split 'train' / 'test').
(b) classification by folder: `<root>/<class name>/<image>`; classes are the sorted folder names.
    Whole slides may sit among the images (tiled by the tile datasets at the model's pixel
    size, histojax/data/datasets.py).
(c) classification by CSV: a `filename,label` CSV + an image folder; an unlabelled test folder
    may be added (label -1). With `classes` (config key data.classes) every label must be one
    of them; without, the classes are inferred and logged with their counts (a rare one is
    flagged as a likely typo).

Hidden files and folders (`.DS_Store`, macOS `._*`) are ignored everywhere.

Listing checks each image's header (mode RGB, mask size == image size); a file that only fails
to decode is caught when the dataset is built (with data.skip_bad, histojax/data/build.py
read_records decodes every record first and skips the bad ones).
"""
import collections
import csv
import dataclasses
import logging
import pathlib
import warnings

import numpy as np
import shapely

from histojax.data import paths
from histojax.data.sources import annotations, common, slides


@dataclasses.dataclass(frozen=True)
class SegRecord:
  name: str
  image_path: pathlib.Path
  mask_path: pathlib.Path
  height: int
  width: int
  split: str = ''  # 'train' / 'test' in the fixed-split layout, else ''
  classes: tuple = ()  # polygon annotations: foreground class names in label order
  whole_slide: bool = False  # cut into annotated regions by slide_regions

  @property
  def group(self) -> str:
    return self.name


@dataclasses.dataclass(frozen=True)
class ClassRecord:
  name: str  # file stem
  image_path: pathlib.Path
  label: int  # index into the class list; -1 when unlabelled
  class_name: str  # '' when unlabelled

  @property
  def group(self) -> str:
    return self.name


def _check_image(path: pathlib.Path, channels: int = 3) -> tuple[int, int]:
  hw, mode = common.image_header(path)
  (common.check_gray_mode if channels == 1 else common.check_rgb_mode)(path, mode)
  return hw


def _stem(path: pathlib.Path) -> str:
  """The name without its extension (`x.ome.tif` -> `x`, as QuPath names its exports)."""
  for suffix in ('.ome.tif', '.ome.tiff'):
    if path.name.lower().endswith(suffix):
      return path.name[:-len(suffix)]
  return path.stem


def _seg_record(image_path, mask_dir, classes=None) -> SegRecord:
  # A small single-level tiled TIFF is an image here: it may come with a mask image.
  whole_slide = slides.is_whole_slide(image_path, small_tiled=False)
  stem = _stem(image_path)
  if whole_slide and mask_dir.name != 'annotations':
    raise paths.DataError(f'{image_path} is a whole slide: its labels come as polygon '
                          f'annotations, {mask_dir.parent}/annotations/{stem}'
                          f'{"|".join(annotations.SUFFIXES)}, not as a mask image.')
  if mask_dir.name == 'annotations':
    mask_path = common.find_file(mask_dir, stem, annotations.SUFFIXES)
    if mask_path is None:
      raise paths.DataError(f'Image {image_path} has no annotation file {stem}'
                            f'{"|".join(annotations.SUFFIXES)} in {mask_dir}.')
    if whole_slide:  # its size is read when its regions are cut (at data.mpp)
      return SegRecord(stem, image_path, mask_path, 0, 0,
                       classes=tuple(classes or ()), whole_slide=True)
    return SegRecord(stem, image_path, mask_path, *_check_image(image_path),
                     classes=tuple(classes or ()))
  mask_path = common.find_file(mask_dir, stem)
  if mask_path is None:
    raise paths.DataError(f'Image {image_path} has no mask {stem}.<ext> in {mask_dir}.')
  image_hw = _check_image(image_path)
  mask_hw = common.image_header(mask_path)[0]
  common.check_same_size(image_path, mask_path, image_hw, mask_hw)
  return SegRecord(stem, image_path, mask_path, *image_hw)


def _images_and_slides(folder: pathlib.Path) -> list[pathlib.Path]:
  """Images and whole slides (vendor formats; tiled TIFFs are among the images) in `folder`."""
  images = common.list_images(folder)
  return sorted(images + [p for p in folder.iterdir() if common.visible(p) and p.is_file()
                          and p not in images
                          and p.name.lower().endswith(slides.VENDOR_SUFFIXES)])


def _folder(root, name) -> pathlib.Path:
  path = pathlib.Path(root) / name if name else pathlib.Path(root)
  if not path.is_dir():
    raise paths.DataError(f'Folder {path} does not exist.')
  return path


FIXED_SPLITS = ('train', 'test')


def has_fixed_split(root) -> bool:
  """True when `root` holds train/ and test/ folders (each with images/ and masks/)."""
  root = pathlib.Path(root)
  found = [s for s in FIXED_SPLITS if (root / s).is_dir()]
  if not found:
    return False
  if (root / 'images').is_dir():
    raise paths.DataError(f'{root} holds both images/ and {found[0]}/: use one layout, '
                          'images/ + masks/ (split by image) or train/ + test/ (a fixed split).')
  missing = [s for s in FIXED_SPLITS if s not in found]
  if missing:
    raise paths.DataError(f'{root} has {found[0]}/ but no {missing[0]}/: a fixed split needs '
                          f'{root}/train/{{images,masks}} and {root}/test/{{images,masks}}.')
  return True


def segmentation(root, images: str = 'images', masks: str = 'masks',
                 skip_bad: bool = False, classes=None) -> common.RecordList:
  """Lists image/mask pairs matched by stem; a mask without an image is warned about. With
  train/ and test/ folders, both are listed (stems unique across them)."""
  if images == 'images' and has_fixed_split(root):
    parts = [segmentation(pathlib.Path(root) / s, skip_bad=skip_bad, classes=classes)
             for s in FIXED_SPLITS]
    items = [dataclasses.replace(r, split=s) for s, part in zip(FIXED_SPLITS, parts)
             for r in part]
    both = set(r.name for r in parts[0]) & set(r.name for r in parts[1])
    if both:
      raise paths.DataError(f'{root}: {len(both)} stems are in both train/ and test/ (e.g. '
                            f'{sorted(both)[0]!r}): a test image must not be trained on.')
    return common.RecordList(items, [m for p in parts for m in p.skipped],
                             [n for p in parts for n in p.notes])
  if masks == 'masks' and not (pathlib.Path(root) / masks).is_dir() and (
      pathlib.Path(root) / 'annotations').is_dir():
    masks = 'annotations'
  image_dir, mask_dir = _folder(root, images), _folder(root, masks)
  image_paths = _images_and_slides(image_dir)
  if not image_paths:
    raise paths.DataError(f'No images in {image_dir}.')
  stems = [_stem(p) for p in image_paths]
  if len(set(stems)) != len(stems):
    raise paths.DataError(f'{image_dir} has two images with the same stem; their masks would '
                          'be ambiguous.')
  bad = common.BadItems(skip_bad, f'segmentation folder {root}')
  items = [r for r in (bad.run(_seg_record, p, mask_dir, classes) for p in image_paths)
           if r is not None]
  listed = (common.list_images(mask_dir) if mask_dir.name != 'annotations' else
            [p for p in mask_dir.iterdir() if p.suffix.lower() in annotations.SUFFIXES])
  orphans = sorted(p.name for p in listed if p.stem not in set(stems))
  notes = []
  if orphans:
    notes.append(f'{len(orphans)} mask(s) in {mask_dir} have no image and were ignored: '
                 f'{", ".join(orphans[:5])}')
    warnings.warn(notes[-1], stacklevel=2)
  return bad.finish(items, notes)


def load_image(record, channels: int = 3) -> np.ndarray:
  """uint8 [H, W, channels] (3: RGB, 1: grayscale) for a SegRecord or ClassRecord; for a
  whole slide its thumbnail (opening it probes it; the tile datasets read its tiles)."""
  if (record.whole_slide if isinstance(record, SegRecord) else
      slides.is_whole_slide(record.image_path)):
    with slides.open_slide(record.image_path, mpp=1.0) as slide:
      return slide.thumbnail(512)[0]
  return (common.read_gray if channels == 1 else common.read_rgb)(record.image_path)


def slide_regions(record: SegRecord, size: int, mpp: float, slide_mpp=None):
  """Yields (name, uint8 image [size, size, 3], int32 labels, int32 instances) for the
  size x size px regions, on a grid over the slide read at `mpp` µm/px, with at least one
  annotated pixel (holes do not count). Policy: every object inside such a region
  is annotated, so its unannotated pixels are background. Names: `<stem>_y<row>_x<col>` (view
  px). Memory holds one region."""
  regions = annotations.read_regions(record.mask_path)
  labels_of = annotations.region_labels(regions, record.classes, str(record.mask_path))
  tree = shapely.STRtree([geom for _, geom, _ in regions])
  drawn = {i for i, (_, _, hole) in enumerate(regions) if not hole}
  with slides.open_slide(record.image_path, mpp=slide_mpp) as slide:
    view = slides.View(slide, mpp)
    height, width = view.shape
    count = 0
    for y in range(0, height, size):
      for x in range(0, width, size):
        box = shapely.box(x * view.factor, y * view.factor, (x + size) * view.factor,
                          (y + size) * view.factor)
        touching = set(tree.query(box, predicate='intersects').tolist())
        if not touching & drawn:
          continue
        labels, instances = annotations.rasterize(
            regions, (size, size), record.classes, str(record.mask_path),
            origin=(x * view.factor, y * view.factor), factor=view.factor, only=touching,
            labels_of=labels_of)
        if not instances.any():  # touched only along an edge, or only by holes
          continue
        count += 1
        yield f'{record.name}_y{y}_x{x}', view.read(y, x, size, size), labels, instances
  if not count:
    raise paths.DataError(
        f'{record.mask_path}: no annotated region lies on {record.image_path.name} '
        f'({width}x{height} px at {mpp:g} µm/px): are its coordinates level-0 pixels of this '
        'slide, and its regions polygons?')


def load_mask(record: SegRecord) -> np.ndarray:
  """int32 [H, W]: binary 0/255 masks as 0/1, label values and palette indices as stored;
  polygon annotations rasterised (their classes 1, 2, ... in data.classes order)."""
  if record.mask_path.suffix.lower() in annotations.SUFFIXES:
    return annotations.load(record.mask_path, (record.height, record.width), record.classes)[0]
  mask = common.read_label_mask(record.mask_path)
  common.check_same_size(record.image_path, record.mask_path, (record.height, record.width),
                         mask.shape)
  return mask


def _sorted_classes(found) -> list[str]:
  """Integer labels in numeric order ('2' before '10'), names sorted."""
  numeric = all(str(c).lstrip('-').isdigit() for c in found)
  return sorted(found, key=int) if numeric else sorted(found)


def _csv_classes(rows, classes, csv_path) -> list[str]:
  """Class names for the CSV rows [(line, filename, label)]: `classes` (every label must be one
  of them), else inferred; inferred classes are logged, a rare one flagged as a likely typo."""
  if classes:
    for line, _, label in rows:
      if label not in classes:
        raise paths.DataError(
            f'Label file {csv_path} line {line}: unknown class name {label!r}; the config key '
            f'data.classes allows {list(classes)}. Fix the label (a typo?) or add the class to '
            'data.classes.')
    return list(classes)
  counts = collections.Counter(label for _, _, label in rows)
  names = _sorted_classes(counts)
  logging.warning('%s: no data.classes set; inferred %d classes from the labels: %s.', csv_path,
                  len(names), ', '.join(f'{n!r} ({counts[n]} rows)' for n in names))
  most = max(counts.values())
  # A class far rarer than the others is more often a misspelt label than a real class.
  rare = [n for n in names if counts[n] < most and (counts[n] == 1 or
                                                    counts[n] < 0.02 * len(rows))]
  for name in rare:
    line = next(n for n, _, label in rows if label == name)
    logging.warning('%s: class %r has only %d of %d rows (first at line %d): it looks like a '
                    'typo. Set data.classes (config key, e.g. classes=A+B+C) to the real class '
                    'names to have unknown labels refused.', csv_path, name, counts[name],
                    len(rows), line)
  return names


def class_folders(root, classes=None, skip_bad: bool = False
                  ) -> tuple[common.RecordList, list[str]]:
  """Images sorted into one sub-folder per class -> (records, class names).

  classes: which sub-folders to use, in label order (the original project's A+B out of A, B, C,
  D); all sub-folders, sorted, when None.
  """
  root = _folder(root, '')
  dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))
  if not dirs:
    raise paths.DataError(f'{root} has no class sub-folders.')
  if classes:
    missing = [c for c in classes if c not in {d.name for d in dirs}]
    if missing:
      raise paths.DataError(f'{root}: no sub-folder for class(es) {missing}; found '
                            f'{[d.name for d in dirs]} (config key: data.classes).')
    dirs = [root / c for c in classes]
  names = [d.name for d in dirs]
  bad = common.BadItems(skip_bad, f'class folders {root}')
  items = []
  for d in dirs:
    images = _images_and_slides(d)
    if not images:  # a class without examples: a misplaced folder, or a wrong data.classes
      raise paths.DataError(f'Class folder {d} holds no images ({", ".join(common.IMAGE_EXTS)}); '
                            'fill it, remove it, or leave it out of data.classes.')
    for p in images:
      if slides.is_whole_slide(p):  # tiled at the model's pixel size when the dataset is built
        items.append(ClassRecord(p.stem, p, names.index(d.name), d.name))
        continue
      ok = bad.run(_check_image, p)
      if ok is not None:
        items.append(ClassRecord(p.stem, p, names.index(d.name), d.name))
  if not items and not bad.messages:
    raise paths.DataError(f'No images in the class folders of {root}.')
  return bad.finish(items), names


def _read_csv(csv_path: pathlib.Path) -> list[tuple[int, str, str]]:
  """-> [(line number, filename, label)], blank lines skipped."""
  try:
    with open(csv_path, newline='', encoding='utf-8-sig') as f:
      reader = csv.reader(f)
      rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise paths.DataError(f'Cannot read label file {csv_path}: {e}') from e
  if not rows:
    raise paths.DataError(f'Label file {csv_path} is empty (expected filename,label rows).')
  header = [h.strip().lower() for h in rows[0][1]]
  has_header = 'filename' in header and 'label' in header
  if has_header:
    i_file, i_label, rows = header.index('filename'), header.index('label'), rows[1:]
  elif 'filename' in header or 'label' in header:  # a header, but one column is missing
    raise paths.DataError(f'Label file {csv_path} has header {rows[0][1]}; expected columns '
                          '"filename" and "label".')
  else:  # no header: first two columns
    i_file, i_label = 0, 1
  if not rows:
    raise paths.DataError(f'Label file {csv_path} has a header but no rows.')
  out = []
  for line, row in rows:
    if len(row) <= max(i_file, i_label) or not row[i_file].strip() or not row[i_label].strip():
      raise paths.DataError(f'Label file {csv_path} line {line} is malformed: {row} '
                            '(expected filename,label).')
    out.append((line, row[i_file].strip(), row[i_label].strip()))
  return out


def _resolve(image_dir: pathlib.Path, filename: str, csv_path) -> pathlib.Path:
  path = image_dir / filename
  if path.is_file():
    return path
  found = common.find_file(image_dir, filename) if not pathlib.Path(filename).suffix else None
  if found is None:
    raise paths.DataError(f'{csv_path} lists {filename!r} but {path} does not exist.')
  return found


def csv_labels(csv_path, image_dir, classes=None, skip_bad: bool = False,
               channels: int = 3) -> tuple[common.RecordList, list[str]]:
  """A `filename,label` CSV + image folder -> (labelled records, class names).

  Filenames may omit the extension. Labels are class names (sorted into indices, or checked
  against `classes`, config key data.classes).
  """
  csv_path = pathlib.Path(csv_path)
  image_dir = _folder(image_dir, '')
  rows = _read_csv(csv_path)
  seen = set()
  for line, name, _ in rows:
    if name in seen:
      raise paths.DataError(f'Label file {csv_path} line {line} lists {name!r} a second time.')
    seen.add(name)
  names = _csv_classes(rows, classes, csv_path)
  bad = common.BadItems(skip_bad, f'labelled images {csv_path}')

  def one(filename, label):
    path = _resolve(image_dir, filename, csv_path)
    _check_image(path, channels)
    return ClassRecord(path.stem, path, names.index(label), label)

  items = bad.finish([r for r in (bad.run(one, f, l) for _, f, l in rows) if r is not None])
  return items, names
