"""Prepared datasets stored as tfds array_record datasets (Tensor features, no TensorFlow).

`prepare(name, fingerprint, splits, generate)` builds `$HISTOJAX_CACHE/tfds/<name>-<hash>/`
once (tfds prints a progress bar) and returns {split: random-access data source}. The hash
covers everything the examples depend on (dataset files' names and sizes, derivation
settings), so a changed setting builds a new dataset instead of reusing a stale one.
Examples are dicts of numpy arrays; their spec is given as {key: (shape, dtype)}; arrays with
more than one unknown dimension are zlib-compressed.
"""
import hashlib
import json
import logging

import numpy as np

from histojax.data import paths


def fingerprint_files(files):
  """Cheap identity of input files: names, sizes and modification times."""
  return [(str(f), f.stat().st_size, int(f.stat().st_mtime)) for f in sorted(files)]


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
  if not builder.is_prepared() or not meta_file.exists():
    logging.info('Preparing %s under %s (once).', name, data_dir)
    # tfds spills splits over 1 GB to temporary files through TensorFlow's file API; keep
    # them in memory instead (our largest split is well under the 24 GB we plan for).
    from tensorflow_datasets.core import shuffle  # pylint: disable=g-import-not-at-top
    shuffle.MAX_MEM_BUFFER_SIZE = max(shuffle.MAX_MEM_BUFFER_SIZE, 16 << 30)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    meta_file.write_text(json.dumps(metas))
  metas = json.loads(meta_file.read_text())
  sources = builder.as_data_source()
  return {s: sources[s] for s in split_names}, {s: metas[s] for s in split_names}


