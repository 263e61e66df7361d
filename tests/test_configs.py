"""One end-to-end `:smoke` run per config (real data, tiny subsets), and config hygiene."""
import ast
import importlib
import json

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, require_data

CONFIGS = sorted(p.stem for p in (ROOT / 'configs').glob('*.py') if p.stem != 'common')
DATA = {'mnist_cnn': 'mnist', 'warwick_unet': 'glas', 'crchisto_nuclei_unet': 'crchistophenotypes',
        'crchisto_types_unet': 'crchistophenotypes', 'patches_cnn': 'glas',
        'nuclei_cnn': 'crchistophenotypes', 'nuclei_resnet18': 'crchistophenotypes'}


def _config(name, arg='smoke'):
  return importlib.import_module(f'configs.{name}').get_config(arg)


@pytest.mark.parametrize('name', CONFIGS)
def test_docstring_states_command_result_and_time(name):
  doc = importlib.import_module(f'configs.{name}').__doc__
  assert f'configs/{name}.py' in doc and 'Expected' in doc and 'Smoke' in doc
  assert 'Time' in doc
  expected = doc[doc.index('Expected'):doc.index('Time')]
  assert any(ch.isdigit() for ch in expected), f'{name}: no number in the expected result'


def write_brecahad_fixture(root, n_images=4):
  """A tiny dataset in the BreCaHAD release layout: images/*.tif + groundTruth/*.json."""
  rng = np.random.default_rng(0)
  (root / 'images').mkdir(parents=True)
  (root / 'groundTruth').mkdir()
  for i in range(n_images):
    image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / 'images' / f'Case_{i // 2 + 1}-0{i % 2}.tif')
    points = {c: [{'x': float(x), 'y': float(y)} for x, y in rng.uniform(0.05, 0.95, (5, 2))]
              for c in ('mitosis', 'apoptosis', 'tumor', 'non_tumor', 'tubule', 'non_tubule')}
    (root / 'groundTruth' / f'Case_{i // 2 + 1}-0{i % 2}.json').write_text(json.dumps(points))


# 20 steps on a few hundred H&E crops: one class for (nearly) every example, or no better than
# the majority baseline; MNIST learns in 20 steps.
BIAS_VERDICT = {'nuclei_cnn': 'WARNING', 'nuclei_resnet18': 'WARNING', 'patches_cnn': 'WARNING',
                'mnist_cnn:cpu': 'OK', 'nuclei_resnet18:cpu': 'WARNING',
                'patches_cnn:cpu': 'WARNING'}


@pytest.mark.parametrize('name', [c for c in CONFIGS if c != 'mnist_cnn'] +  # MNIST: test_train
                         ['brecahad_unet:types', 'mnist_cnn:cpu', 'warwick_unet:cpu',
                          'crchisto_nuclei_unet:cpu', 'nuclei_resnet18:cpu', 'patches_cnn:cpu'])
def test_smoke_run(name, tmp_path):
  from histojax import train
  name, _, arg = name.partition(':')
  config = _config(name, ','.join(filter(None, ['smoke', arg])))
  if name == 'brecahad_unet':
    write_brecahad_fixture(tmp_path / 'brecahad', n_images=6)
    config.data.root = str(tmp_path / 'brecahad')
    config.data.fractions = dict(train=0.34, val=0.33, test=0.33)
    config.inference.window = (64, 64)
  else:
    require_data(DATA[name])
  results = train.train_and_evaluate(config, tmp_path / 'w')
  for part, scalars in results.items():
    assert scalars['count'] > 0, part
  key = 'accuracy' if 'accuracy' in results['val'] else 'pixel_accuracy'
  assert all(np.isfinite(scalars[key]) for scalars in results.values())
  # What every report promises (README: workdir layout).
  w = tmp_path / 'w'
  report = (w / 'report.md').read_text()
  tests = [p for p in results if p not in ('val', 'test')] or ['test']
  plots = {p.name for p in (w / 'plots').iterdir()}
  assert 'curves.png' in plots and {f'confusion_{p}.png' for p in tests} <= plots, plots
  assert any((w / 'tensorboard').iterdir())
  if config.task == 'segmentation':
    assert {f'panels_{p}.png' for p in tests} <= plots, plots
    if name == 'warwick_unet':  # GlaS object metrics per test part, in the report's table
      row = next(l for l in report.splitlines() if l.startswith('| object_f1 |'))
      assert len([c for c in row.split('|')[2:-1] if c.strip()]) == 3  # val, testA, testB
  else:
    # The bias check, in words: what these tiny runs on their data deserve (a 20-step model
    # that predicts one class must be warned about).
    verdict = BIAS_VERDICT[name + (':' + arg if arg else '')]
    assert f'> {verdict}:' in report, report[:3000]
    assert 'majority_baseline' in report
    if config.get('explain_samples'):
      assert {'explain_test_0_occlusion.png', 'explain_test_0_ig.png'} <= plots, plots


def test_original_folder_layout_runs_both_models_by_argument(tmp_path):
  """The original project's whole images in folders A, B, C, D: model 1 = A vs B, model 2 = C vs D."""
  from histojax import train
  rng = np.random.default_rng(0)
  for k, name in enumerate('ABCD'):
    (tmp_path / 'data' / name).mkdir(parents=True)
    for i in range(4):
      base = np.array([[200, 80, 160], [120, 60, 200], [220, 120, 120], [90, 90, 200]][k])
      image = np.clip(base + rng.normal(0, 25, (300, 300, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(image).save(tmp_path / 'data' / name / f'{name}{i}.png')
  for classes in ('A+B', 'C+D'):
    config = _config('patches_cnn', f'smoke,root={tmp_path / "data"},classes={classes}')
    config.data.min_tissue = 0.0
    config.data.fractions = dict(train=0.34, val=0.33, test=0.33)
    results = train.train_and_evaluate(config, tmp_path / classes)
    report = (tmp_path / classes / 'report.md').read_text()
    assert results['test']['count'] % 9 == 0 and results['test']['count'] > 0  # 9 tiles/image
    assert all(c in report for c in classes.split('+'))


# Every knob the README or a docstring tells users to set with --config.<key>=... must exist
# in the config (an override of a missing key is an error).
OVERRIDES = {
    'warwick_unet': ['class_weights=(1,2)', 'ignore_empty=False', 'freeze.steps=100',
                     'data.skip_bad=True', 'inference.tta=none', 'report_panels=2'],
    'crchisto_types_unet': ['class_weights=(0.5,1,1,1,3)', 'dice_over=image',
                            'data.ignore_untyped=False', 'freeze.steps=100'],
    'nuclei_cnn': ['freeze.steps=100', 'data.folds=4', 'data.fold=1', 'data.skip_bad=True'],
    'mnist_cnn': ['data.skip_bad=True', 'total_steps=5'],
}


@pytest.mark.parametrize('name', sorted(OVERRIDES))
def test_documented_overrides_exist(name):
  from absl import flags
  from ml_collections import config_flags
  argv = ['prog', f'--config=configs/{name}.py'] + [f'--config.{o}' for o in OVERRIDES[name]]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=values, lock_config=True,
                                  sys_argv=argv)  # override flags are made from argv
  values(argv)
  for override in OVERRIDES[name]:
    key, value = override.split('=')
    node = values.config
    for part in key.split('.'):
      node = node[part]
    try:
      expected = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      expected = value  # a bare string
    assert node == expected, override


CONFIG_METHODS = {'get', 'to_dict', 'to_json', 'items', 'keys', 'values', 'lock', 'unlock',
                  'update', 'copy_and_resolve_references'}


def config_reads():
  """{dotted key: 'file:line'} of every config key read in histojax/: attribute chains on a
  name `config` (config.data.patch_size) and config.<group>.get('key')."""
  reads = {}
  for path in sorted((ROOT / 'histojax').rglob('*.py')):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if not isinstance(node, ast.Attribute):
        continue
      chain, base = [], node
      while isinstance(base, ast.Attribute):
        chain.append(base.attr)
        base = base.value
      if not (isinstance(base, ast.Name) and base.id == 'config'):
        continue
      keys = chain[::-1]
      if keys[-1] in CONFIG_METHODS:
        keys = keys[:-1]
      if keys:
        reads.setdefault('.'.join(keys), f'{path.relative_to(ROOT)}:{node.lineno}')
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == 'get' and node.args
          and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        owner, chain = node.func.value, []
        while isinstance(owner, ast.Attribute):
          chain.append(owner.attr)
          owner = owner.value
        if isinstance(owner, ast.Name) and owner.id == 'config':
          key = '.'.join([*chain[::-1], node.args[0].value])
          reads.setdefault(key, f'{path.relative_to(ROOT)}:{node.lineno}')
  return reads


def test_every_config_key_the_code_reads_is_a_base_config_field():
  """One place for every default: a key read in library code but missing from
  configs/common.py base_config() could not be set from the command line."""
  from configs import common
  from histojax import workdir
  fields = set()
  for key in workdir.flatten(common.base_config().to_dict()):
    parts = key.split('.')
    fields.update('.'.join(parts[:i]) for i in range(1, len(parts) + 1))
  reads = config_reads()
  assert 'data.patch_size' in reads and 'inference.tta' in reads  # the scan sees reads
  missing = {k: where for k, where in reads.items() if k not in fields}
  assert not missing, f'config keys read but not defined in base_config: {missing}'


@pytest.mark.parametrize('name', CONFIGS + ['mnist_cnn:cpu', 'warwick_unet:cpu',
                                             'warwick_unet:cpu,slides',
                                             'warwick_unet:flips_only,slides',
                                             'crchisto_nuclei_unet:cpu', 'nuclei_resnet18:cpu',
                                             'patches_cnn:cpu', 'crchisto_types_unet:smoke'])
def test_configs_keep_every_base_field(name):
  """A config that replaces a whole group (c.optimizer = dict(...)) drops the base defaults
  in it, and the code's attribute read then fails: configs update groups instead."""
  from configs import common
  from histojax import workdir
  name, _, arg = name.partition(':')
  have = workdir.flatten(_config(name, arg or None).to_dict())
  dropped = [k for k in workdir.flatten(common.base_config().to_dict())
             if k not in have and not any(h.startswith(k + '.') for h in have)]
  assert not dropped, f'{name}: base config keys missing: {dropped}'


def test_slides_argument_trains_on_glass_edges_and_jpeg_crops():
  """`:slides` turns on what a slide shows and GlaS crops do not; without it both stay off."""
  from histojax.data import augment
  for arg in ('cpu,slides', 'flips_only,slides'):
    params = _config('warwick_unet', arg).data.augment.to_dict()
    assert params['glass_edge'] == 0.3 and tuple(params['jpeg_quality']) == (60, 95), arg
    image = np.random.default_rng(0).integers(0, 200, (64, 64, 3), dtype=np.uint8)
    mask = np.ones((64, 64), np.int32)
    params.update(p_glass_edge=1.0, p_jpeg_quality=1.0, crop_size=None)
    out, out_mask = augment.augment(image, mask, params, seed=0, epoch=0, index=0)
    lossless, _ = augment.augment(image, mask, dict(params, p_jpeg_quality=0.0), seed=0,
                                  epoch=0, index=0)
    assert (out_mask == 0).any() and not np.array_equal(out, lossless), arg
  plain = _config('warwick_unet', 'cpu').data.augment
  assert not plain.glass_edge and not any(plain.jpeg_quality)


def write_segmentation_folder(root, n_images=6, classes=2):
  """images/ + masks/ with matching stems: rectangles of label 1..classes-1 (0/255 if binary)."""
  rng = np.random.default_rng(1)
  (root / 'images').mkdir(parents=True)
  (root / 'masks').mkdir()
  for i in range(n_images):
    image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    mask = np.zeros((96, 128), np.uint8)
    for label in range(1, classes):
      r, c = rng.integers(0, 60, 2)
      mask[r:r + 30, c:c + 40] = label
      image[mask == label] = (200 * label // classes, 50, 120)
    Image.fromarray(image).save(root / 'images' / f'slide{i}.png')
    Image.fromarray(mask * 255 if classes == 2 else mask).save(root / 'masks' / f'slide{i}.png')


@pytest.mark.parametrize('classes', [2, 3])
def test_own_segmentation_folder_end_to_end(tmp_path, classes):
  from histojax import train
  from histojax.data import paths
  write_segmentation_folder(tmp_path / 'own', classes=classes)
  config = _config('warwick_unet', f'smoke,root={tmp_path / "own"},classes={classes}')
  config.inference.window = (64, 64)
  results = train.train_and_evaluate(config, tmp_path / 'w')
  assert set(results) == {'val', 'test'} and results['test']['count'] >= 1
  assert sum(r['count'] for r in results.values()) <= 6
  key = 'dice' if classes == 2 else 'mean_iou'
  assert np.isfinite(results['test'][key])
  if classes == 3:
    config.num_classes = 2  # a mask with label 2 is out of range: error names file and key
    config.loss = 'bce+dice'
    with pytest.raises(paths.DataError, match=r'slide\d\.png has label 2.*num_classes'):
      train.train_and_evaluate(config, tmp_path / 'w2')


def test_skip_bad_skips_undecodable_files_at_dataset_level(tmp_path):
  """Listing reads headers only: a truncated PNG and a grayscale tile image must still be
  skipped (and counted in the notes) with data.skip_bad, and stop the build without it."""
  from histojax.data import datasets, paths
  write_segmentation_folder(tmp_path / 'seg')
  png = tmp_path / 'seg' / 'images' / 'slide0.png'
  png.write_bytes(png.read_bytes()[:len(png.read_bytes()) // 2])  # truncated pixel data
  config = _config('warwick_unet', f'smoke,root={tmp_path / "seg"}')
  with pytest.raises(paths.DataError, match='slide0.png'):
    datasets.get_splits(config)
  config.data.skip_bad = True
  parts = datasets.get_splits(config)
  assert len(parts.train) + len(parts.val) + len(parts.tests['test']) == 5
  assert any('Skipped bad input' in n and 'slide0.png' in n for n in parts.info['notes'])

  rng = np.random.default_rng(0)
  for cls in 'AB':
    (tmp_path / 'tiles' / cls).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(
          tmp_path / 'tiles' / cls / f'{cls}{i}.png')
  Image.fromarray(np.zeros((200, 200), np.uint8)).save(tmp_path / 'tiles' / 'A' / 'gray.png')
  config = _config('patches_cnn', f'smoke,root={tmp_path / "tiles"},classes=A+B')
  config.data.min_tissue = 0.0
  with pytest.raises(paths.DataError, match='gray.png'):
    datasets.get_splits(config)
  config.data.skip_bad = True
  parts = datasets.get_splits(config)
  assert any('Skipped bad input' in n and 'gray.png' in n for n in parts.info['notes'])


def test_no_validation_split_evaluates_the_last_checkpoint(tmp_path):
  """data.val_fraction=0 trains on every GlaS training image: no val evaluations, no model
  selection, the last checkpoint is reported (not the first evaluated one)."""
  require_data('glas')
  import json
  from histojax import train
  config = _config('warwick_unet')
  config.data.val_fraction = 0.0
  config.eval_every_steps = 2
  results = train.train_and_evaluate(config, tmp_path / 'w')
  assert 'val' not in results and results['testA']['count'] > 0
  lines = [json.loads(l) for l in (tmp_path / 'w' / 'metrics.jsonl').read_text().splitlines()]
  assert not any(k.startswith(('val/', 'final_val/')) for l in lines for k in l)
  assert {l['step'] for l in lines if 'testA/dice' in l} == {config.total_steps}
  report = (tmp_path / 'w' / 'report.md').read_text()
  assert '(the last: no validation score selected one)' in report
