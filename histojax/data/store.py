"""Prepared datasets stored as tfds array_record datasets (Tensor features, no TensorFlow).

`prepare(name, fingerprint, splits, generate)` builds `$HISTOJAX_CACHE/tfds/<name>-<hash>/`
once (tfds prints a progress bar) and returns {split: random-access data source}. The hash
covers everything the examples depend on (every input file - images, masks, annotation and
label files - by name, size and content hash; derivation settings; the builder's format
version), so an edited label or a changed setting builds a new dataset instead of reusing a
stale one. A dataset whose side file (histojax_meta.json) is lost or damaged is rebuilt.
Examples are dicts of numpy arrays; their spec is given as {key: (shape, dtype)}; arrays with
more than one unknown dimension are zlib-compressed.
"""
import hashlib
import json
import logging
import os
import shutil
import time

import numpy as np

from histojax import workdir as workdir_lib
from histojax.data import paths


def _sha256(path) -> str:
  try:
    with open(path, 'rb') as f:
      return hashlib.file_digest(f, 'sha256').hexdigest()
  except OSError as e:
    raise paths.DataError(f'Cannot read input file {path}: {e}') from e


def fingerprint_files(files):
  """Identity of input files: name, size and sha256 of the content, per file.

  Content, not size and mtime: an edited mask or a swapped label keeps its size, a copy may
  keep its mtime, and a copy that does not should not rebuild anything. Hashing is cheap next to a
  build: GlaS + CRCHisto (937 files,
  171 MiB) take ~0.15-0.3 s on one core.
  """
  start, out = time.perf_counter(), []
  for f in sorted({os.fspath(f) for f in files}):
    try:
      stat = os.stat(f)
    except OSError as e:
      raise paths.DataError(f'Cannot read input file {f}: {e}') from e
    out.append((f, stat.st_size, _sha256(f)))
  seconds = time.perf_counter() - start
  if seconds > 5:
    logging.info('Hashed %d input files in %.1f s (data cache fingerprint).', len(out), seconds)
  return out


def _features(spec):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  out = {}
  for key, (shape, dtype) in spec.items():
    unknown = sum(d is None for d in shape)
    encoding = 'zlib' if unknown > 1 else 'none'
    out[key] = tfds.features.Tensor(shape=tuple(shape), dtype=np.dtype(dtype),
                                    encoding=encoding)
  return tfds.features.FeaturesDict(out)


def prepare(name, fingerprint, split_names, generate, spec):
  """Builds (once) and opens a tfds dataset of examples from `generate(split)`.

  generate(split) yields (example, meta) pairs: example a dict matching `spec`, meta any
  JSON-able value (e.g. source image and patient) kept in a side file. Reading keeps the yield
  order. Returns ({split: data source}, {split: [meta, ...]}).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode())
  data_dir = paths.cache_root() / 'tfds' / f'{name}-{digest.hexdigest()[:12]}'

  with tfds.core.registered.skip_registration():
    class Builder(tfds.core.GeneratorBasedBuilder):  # pylint: disable=unused-variable
      VERSION = tfds.core.Version('1.0.0')

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=_features(spec),
                                     disable_shuffling=True,
                                     description=f'histojax {name}')

      def _split_generators(self, dl_manager):
        del dl_manager
        return {s: self._generate_examples(s) for s in split_names}

      def _generate_examples(self, split):
        metas[split] = []
        for i, (example, meta) in enumerate(generate(split)):
          metas[split].append(meta)
          yield i, example

    Builder.name = f'histojax_{name}'.replace('-', '_')
  metas = {}
  builder = Builder(data_dir=str(data_dir), file_format='array_record')
  meta_file = data_dir / 'histojax_meta.json'
  if not (builder.is_prepared() and meta_file.exists()):
    paths.check_writable(data_dir.parent)  # a prebuilt read-only cache only needs reading
  # One builder at a time (hosts sharing a cache, parallel fold runs of one dataset): a
  # second process waits, then finds the dataset built instead of "repairing" it mid-build.
  locks = paths.cache_root() / 'locks'
  writable = os.access(paths.cache_root(), os.W_OK)
  if writable:
    locks.mkdir(exist_ok=True)
  with paths.file_lock(locks / f'{data_dir.name}.lock', enabled=writable):
    return _prepare_locked(Builder, name, data_dir, meta_file, split_names, metas)


def _prepare_locked(builder_cls, name, data_dir, meta_file, split_names, metas):
  """prepare() under its lock: rebuild a damaged folder, build a missing one, open it."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = builder_cls(data_dir=str(data_dir), file_format='array_record')
  if builder.is_prepared() and _read_meta(meta_file, split_names, builder) is None:
    # Examples without their side file cannot be used (their order is all we know); a folder
    # left like this would fail every run, so rebuild it instead.
    logging.warning('Cached dataset %s has a missing or damaged %s; deleting the folder and '
                    'rebuilding it.', data_dir, meta_file.name)
    shutil.rmtree(data_dir)
    builder = builder_cls(data_dir=str(data_dir), file_format='array_record')
  if not builder.is_prepared() or not meta_file.exists():
    logging.info('Preparing %s under %s (once).', name, data_dir)
    # tfds spills splits over 1 GB to temporary files through TensorFlow's file API; keep
    # them in memory instead (our largest split is well under the 24 GB we plan for).
    from tensorflow_datasets.core import shuffle  # pylint: disable=g-import-not-at-top
    shuffle.MAX_MEM_BUFFER_SIZE = max(shuffle.MAX_MEM_BUFFER_SIZE, 16 << 30)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    workdir_lib.write_json_atomic(meta_file, metas)  # never a torn side file
  metas = _read_meta(meta_file, split_names, builder)
  if metas is None:
    raise paths.DataError(f'{meta_file} is unreadable right after it was written; delete '
                          f'{data_dir} and run again.')
  sources = builder.as_data_source()
  return {s: sources[s] for s in split_names}, {s: metas[s] for s in split_names}


def _read_meta(meta_file, split_names, builder):
  """The side file's {split: [meta, ...]}, or None when it is missing, torn, lacks a split or
  does not have one entry per stored example."""
  try:
    metas = json.loads(meta_file.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError):
    return None
  if not isinstance(metas, dict) or not all(isinstance(metas.get(s), list)
                                            for s in split_names):
    return None
  splits = builder.info.splits
  if any(s not in splits or len(metas[s]) != splits[s].num_examples for s in split_names):
    return None
  return metas
