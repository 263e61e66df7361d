"""MNIST from the original IDX files (gzip or raw) under $HISTOJAX_DATA/mnist, or from a
prepared tfds `mnist` in a tfds data_dir."""
import gzip
import pathlib

import numpy as np

from histojax.data import paths

FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
_MAGIC = {2051: 3, 2049: 1}  # images: 3 dims, labels: 1 dim; dtype ubyte (0x08)


def _find(folder: pathlib.Path, stem: str) -> pathlib.Path:
  for name in (stem + '.gz', stem, stem.replace('-idx', '.idx')):
    if (folder / name).exists():
      return folder / name
  raise paths.DataError(
      f'MNIST file {stem}.gz not found in {folder}. histojax never downloads data: copy the '
      f'four original IDX files ({", ".join(s + ".gz" for pair in FILES.values() for s in pair)}) '
      f'there, or set HISTOJAX_DATA to the folder that holds mnist/.')


def read_idx(path: pathlib.Path) -> np.ndarray:
  """Reads one IDX file, checking magic number and size so corruption cannot pass silently."""
  try:
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise paths.DataError(f'Cannot read MNIST file {path}: {e} (truncated or corrupt?)') from e
  if len(raw) < 8:
    raise paths.DataError(f'MNIST file {path} is truncated ({len(raw)} bytes).')
  magic = int.from_bytes(raw[:4], 'big')
  if magic not in _MAGIC:
    raise paths.DataError(f'MNIST file {path} has bad magic number {magic} (not an IDX file).')
  ndim = _MAGIC[magic]
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  offset = 4 + 4 * ndim
  expected = offset + int(np.prod(shape))
  if len(raw) != expected:
    raise paths.DataError(f'MNIST file {path} is truncated or corrupt: {len(raw)} bytes, '
                          f'expected {expected} for shape {shape}.')
  return np.frombuffer(raw, np.uint8, offset=offset).reshape(shape)


def load(split: str) -> dict[str, np.ndarray]:
  """Returns {'image': uint8 [N,28,28,1], 'label': int32 [N]} for 'train' or 'test'."""
  folder = paths.dataset_dir('mnist')
  image_file, label_file = (_find(folder, s) for s in FILES[split])
  images, labels = read_idx(image_file), read_idx(label_file)
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise paths.DataError(f'MNIST {split}: {image_file} and {label_file} do not match '
                          f'({images.shape} images vs {labels.shape} labels).')
  return {'image': images[..., None], 'label': labels.astype(np.int32)}


def load_tfds(split: str, data_dir: str) -> dict[str, np.ndarray]:
  """Reads a prepared tfds `mnist` (array_record) from `data_dir`; never downloads."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    source = tfds.data_source('mnist', split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several types for "not prepared"
    raise paths.DataError(f'No prepared tfds mnist in {data_dir}: {e}') from e
  examples = [source[i] for i in range(len(source))]
  return {'image': np.stack([np.asarray(e['image']) for e in examples]).astype(np.uint8),
          'label': np.asarray([e['label'] for e in examples], np.int32)}
