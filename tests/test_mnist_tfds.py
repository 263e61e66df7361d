"""A prepared tfds `mnist` (array_record) in a data_dir is read without TensorFlow."""
import io

import numpy as np
import pytest
from PIL import Image

from conftest import require_data
from histojax.data.sources import mnist


def _png(self, array):  # tfds encodes PNGs with TensorFlow; PIL writes the same format
  del self
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(array)[..., 0]).save(buffer, format='PNG')
  return buffer.getvalue()


def test_reads_prepared_tfds_mnist(tmp_path, monkeypatch):
  require_data('mnist')
  import tensorflow_datasets as tfds
  from tensorflow_datasets.image_classification import mnist as tfds_mnist
  monkeypatch.setattr(tfds.features.Image, 'encode_example', _png)
  idx = {split: mnist.load(split) for split in ('train', 'test')}

  with tfds.core.registered.skip_registration():
    class FromIdx(tfds_mnist.MNIST):  # the real tfds builder, fed from local files
      name = 'mnist'

      def _split_generators(self, dl_manager):
        return {s: self._generate_examples(s) for s in ('train', 'test')}

      def _generate_examples(self, split):
        for i in range(64):
          yield i, {'image': idx[split]['image'][i], 'label': int(idx[split]['label'][i])}

  FromIdx(data_dir=str(tmp_path), file_format='array_record').download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  got = mnist.load_tfds('test', str(tmp_path))
  assert got['image'].shape == (64, 28, 28, 1) and got['image'].dtype == np.uint8
  as_set = lambda a: sorted((im.tobytes(), int(l)) for im, l in zip(a['image'], a['label']))
  assert as_set(got) == as_set({k: v[:64] for k, v in idx['test'].items()})


def test_missing_tfds_dataset_is_a_clear_error(tmp_path):
  from histojax.data import paths
  with pytest.raises(paths.DataError, match=f'No prepared tfds mnist in {tmp_path}'):
    mnist.load_tfds('test', str(tmp_path))
