"""What a person looks at, checked by content: the overlay style (contours in the class
palette over the untinted image, legend, title), confusion matrices, curves, the report
header."""
import json

import numpy as np
import pytest

from histojax import export, overlay, plots, report


def _scene():
  rng = np.random.default_rng(0)
  image = rng.integers(60, 200, (64, 80, 3)).astype(np.uint8)
  labels = np.zeros((64, 80), np.int32)
  labels[10:30, 10:40] = 1
  labels[40:60, 50:75] = 2
  labels[15:20, 20:25] = 0  # a hole (a lumen)
  return image, labels


def test_contours_draw_each_class_in_its_colour_and_leave_the_tissue_untinted():
  image, labels = _scene()
  drawn = overlay.contours(image, labels, 3, thickness=1)
  colours = export.class_colours(3)
  for c in (1, 2):
    region = labels == c
    edge = region & ~np.pad(region, 1)[2:, 1:-1] | region & ~np.pad(region, 1)[:-2, 1:-1] | (
        region & ~np.pad(region, 1)[1:-1, 2:]) | region & ~np.pad(region, 1)[1:-1, :-2]
    assert (drawn[edge] == colours[c]).all()  # the boundary, lumen edge included
    inner = region & ~edge
    assert (drawn[inner] == image[inner]).all()  # no tint inside (fill 0)
  outside = (labels == 0)
  changed = (drawn != image).any(-1)
  assert not (changed & outside).any()  # inner contours: background pixels never touched
  filled = overlay.contours(image, labels, 3, fill=0.2, thickness=1)
  inner = (labels == 1) & ~(drawn != image).any(-1)
  expect = (0.8 * image[inner] + 0.2 * np.asarray(colours[1])).astype(np.uint8)
  assert np.abs(filled[inner].astype(int) - expect).max() <= 1


def test_the_palette_is_fixed_and_distinct():
  colours = export.class_colours(8)
  assert colours[0] == (0, 0, 0) and colours[1] == (230, 159, 0)  # Okabe-Ito orange
  assert len(set(colours)) == 8


def test_legend_shows_a_swatch_and_a_name_for_every_class():
  names = ['background', 'epithelial', 'inflammatory', 'fibroblast', 'others']
  band = overlay.legend_band(names, 600)
  colours = export.class_colours(len(names))
  xs = []
  for c in range(1, len(names)):
    hit = np.where((band == colours[c]).all(-1))
    assert hit[0].size > 20, names[c]  # the swatch
    xs.append(hit[1].max())
  assert xs == sorted(xs)  # in class order, left to right
  for c, x in enumerate(xs, 1):  # dark text right of each swatch
    text = band[:, x + 2:x + 40]
    assert (text.sum(-1) < 200).sum() > 10, names[c]
  narrow = overlay.legend_band(names, 160)  # too narrow for one row: wrapped, none dropped
  assert narrow.shape[1] == 160 and narrow.shape[0] > band.shape[0]
  for c in range(1, len(names)):
    assert (narrow == colours[c]).all(-1).sum() > 20, names[c]
  assert overlay.title_band('a very long title ' * 20, 12).shape[1] == 12  # ends
  shorter = overlay.legend_band(names[:-1], 600)
  assert not (shorter == colours[4]).all(-1).any()  # a class not listed has no swatch


def test_figure_stacks_title_image_legend_and_keeps_the_width():
  image, labels = _scene()
  out = overlay.figure(image, labels, ['background', 'a', 'b'], title='x.png: Dice 0.9')
  assert out.shape[1] == 80 and out.shape[0] > 64 and out.dtype == np.uint8
  assert (out[:16] != 255).any()  # the title's ink


@pytest.mark.parametrize('seed', range(5))
def test_per_image_dice_against_brute_force(seed):
  rng = np.random.default_rng(seed)
  pred, true = rng.integers(0, 3, (2, 20, 20))
  true[0, :5] = -1  # ignored
  scores = []
  for c in (1, 2):
    p = [(pred[i, j] == c) for i in range(20) for j in range(20) if true[i, j] >= 0]
    t = [(true[i, j] == c) for i in range(20) for j in range(20) if true[i, j] >= 0]
    both = sum(a and b for a, b in zip(p, t))
    scores.append(2 * both / (sum(p) + sum(t)))
  assert overlay.dice(pred, true, 3) == pytest.approx(np.mean(scores))
  assert overlay.dice(np.zeros((4, 4)), np.zeros((4, 4)), 2) == 1.0


def test_confusion_is_row_normalised_with_short_counts(monkeypatch):
  matrix = np.array([[1_200_000, 300_000], [1_500, 98_500]])
  fig = plots.confusion_figure(matrix, ['background', 'gland'])
  texts = [t.get_text() for t in fig.axes[0].texts]
  assert texts == ['80.0%\n1.2M', '20.0%\n300k', '1.5%\n1.5k', '98.5%\n98.5k']
  labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
  assert labels == ['background\n(1.5M)', 'gland\n(100k)']
  assert plots.human_count(999) == '999' and plots.human_count(2000) == '2k'
  assert plots.human_count(999_950) == '1M' and plots.human_count(999_949) == '999.9k'
  big = plots.confusion_figure(np.eye(5, dtype=int) * 10, list('abcde'))
  assert big.get_size_inches()[0] > fig.get_size_inches()[0]  # sized to fit


def test_curves_plot_the_selection_metric_and_mark_the_chosen_step(tmp_path, monkeypatch):
  rows = [{'step': s, 'train/loss': 1 / s, 'val/loss': 2 / s, 'val/weighted_f1': f,
           'train/accuracy': 0.5, 'val/accuracy': 0.6}
          for s, f in ((100, 0.5), (200, 0.8), (300, 0.7))]
  (tmp_path / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
  captured = {}
  monkeypatch.setattr(plots, '_save', lambda fig, *a, **k: captured.setdefault('fig', fig))
  plots.curves(tmp_path, ('loss', 'accuracy'), selection='val/weighted_f1', chosen_step=200)
  axes = captured['fig'].axes
  assert [a.get_title() for a in axes] == ['loss', 'accuracy',
                                           'weighted_f1 (selects the checkpoint)']
  stars = [l for l in axes[2].lines if l.get_marker() == '*']
  assert len(stars) == 1 and list(stars[0].get_xdata()) == [200]
  assert list(stars[0].get_ydata()) == [0.8]


def test_segmentation_panels_name_the_image_give_its_dice_and_a_legend(tmp_path, monkeypatch):
  image, labels = _scene()
  captured = {}
  monkeypatch.setattr(plots, '_save', lambda fig, *a, **k: captured.setdefault('fig', fig))
  panel = {'image': image, 'true': labels, 'pred': labels, 'name': 'testA_1', 'dice': 1.0}
  plots.segmentation_panels(tmp_path, [panel], 'p.png', ['background', 'gland', 'lumen'])
  fig = captured['fig']
  assert [a.get_title() for a in fig.axes] == ['testA_1', 'ground truth',
                                               'prediction: Dice 1.000']
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert legend == ['gland', 'lumen']


def test_report_header_has_command_commit_versions_and_a_smoke_banner(monkeypatch):
  from configs import mnist_cnn
  monkeypatch.setattr('sys.orig_argv', ['/usr/bin/python3.12', 'launch.py',
                                        '--config=configs/mnist_cnn.py:smoke', '--workdir=w'])
  loop = {'best_step': 20, 'best_value': 0.7016226133226953, 'stopped_early': False,
          'starts': 1}
  cost = {'cost/cpu_seconds': 90.0, 'cost/wall_seconds': 60.0}
  text = '\n'.join(report.header(mnist_cnn.get_config('smoke'), 20, loop, cost, 20))
  assert '`python launch.py --config=configs/mnist_cnn.py:smoke --workdir=w`' in text
  commit = report.git_commit()
  assert f'- commit: {commit}' in text
  assert commit == 'not a git checkout' or len(commit.split()[0]) == 12
  for package in ('jax', 'flax', 'optax', 'orbax-checkpoint', 'grain'):
    assert f'{package} ' in text
  assert 'SMOKE RUN' in text and '0.7016)' in text and '0.70162' not in text
  assert 'steps trained: 20' in text and '1.0 min wall' in text
  assert 'SMOKE' not in '\n'.join(report.header(mnist_cnn.get_config(), 20, loop, cost, 20))
  assert report.fmt(2.0, 'count') == '2' and report.fmt(1.0, 'dice') == '1.0000'
  assert report.fmt(0.5) == '0.5000' and report.fmt(None) == ''
  assert report.fmt(0.0, 'top_predicted_class') == '0' and report.fmt(0.0) == '0.0000'


def test_git_commit_outside_a_checkout(monkeypatch, tmp_path):
  import subprocess
  def fail(*a, **k):
    raise subprocess.CalledProcessError(128, 'git')
  monkeypatch.setattr(subprocess, 'run', fail)
  assert report.git_commit() == 'not a git checkout'


def _events(folder):
  """Every Event in a TensorBoard folder (TFRecord framing: length, crc, data, crc)."""
  import struct
  from tensorboardX.proto import event_pb2
  out = []
  for path in sorted(folder.rglob('events.out.tfevents.*')):
    data = path.read_bytes()
    i = 0
    while i < len(data):
      (n,) = struct.unpack('<Q', data[i:i + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[i + 12:i + 12 + n])
      out.append(event)
      i += 12 + n + 4
  return out


def test_tensorboard_gets_the_config_as_text_and_hparams(tmp_path):
  from configs import mnist_cnn
  from histojax import writers
  config = mnist_cnn.get_config('smoke')
  writer = writers.MetricWriter(tmp_path)
  writer.write_config(0, json.loads(config.to_json()), metrics=('val/accuracy',))
  writer.write_images(3, {'report/confusion': np.zeros((8, 8, 3), np.uint8)})
  writer.close()
  values = [v for e in _events(tmp_path / 'tensorboard') for v in e.summary.value]
  text = next(v for v in values if v.tag.startswith('config'))
  assert b'"optimizer"' in text.tensor.string_val[0]
  hparams = [v for v in values if v.metadata.plugin_data.plugin_name == 'hparams']
  blob = b''.join(v.metadata.plugin_data.content for v in hparams)
  for key in (b'optimizer.lr', b'data.augment', b'batch_size', b'val/accuracy'):
    assert key in blob
  assert any(v.tag == 'report/confusion' and v.image.height == 8 for v in values)
