"""Import torchvision ResNet18 weights (a state dict saved as .npz) into our ResNet18.

The converter needs only numpy. To get an .npz from a torch checkpoint (needs torch):

  # e.g. torch.save(torchvision.models.resnet18(weights='DEFAULT').state_dict(), 'resnet18.pth')
  python -m histojax.models.torch_import --pt=resnet18.pth --out=resnet18.npz

Then, for a model built as ResNet18(num_classes, stem='imagenet'):

  variables = model.init(rng, x)
  variables = torch_import.convert_resnet18('resnet18.npz', variables, skip_head=True)
"""
import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np

STAGE_SIZES = (2, 2, 2, 2)
_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
       'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}


def torch_keys(stage_sizes: Sequence[int] = STAGE_SIZES) -> dict:
  """torchvision key → (collection, flax path tuple, kind) with kind in {conv, bn, linear}."""
  keys = {}

  def conv(tkey, path):
    keys[tkey + '.weight'] = ('params', path + ('kernel',), 'conv')

  def bn(tkey, path):
    for suffix, (col, leaf) in _BN.items():
      keys[f'{tkey}.{suffix}'] = (col, path + (leaf,), 'bn')

  conv('conv1', ('conv1',))
  bn('bn1', ('bn1',))
  for s, blocks in enumerate(stage_sizes):
    for b in range(blocks):
      t, f = f'layer{s + 1}.{b}', f'layer{s + 1}_{b}'
      conv(f'{t}.conv1', (f, 'conv1'))
      bn(f'{t}.bn1', (f, 'bn1'))
      conv(f'{t}.conv2', (f, 'conv2'))
      bn(f'{t}.bn2', (f, 'bn2'))
      if s > 0 and b == 0:
        conv(f'{t}.downsample.0', (f, 'downsample_0'))
        bn(f'{t}.downsample.1', (f, 'downsample_1'))
  keys['fc.weight'] = ('params', ('fc', 'kernel'), 'linear')
  keys['fc.bias'] = ('params', ('fc', 'bias'), 'linear')
  return keys


def _set(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _get(tree, path):
  for p in path:
    if not hasattr(tree, 'get') or p not in tree:
      return None
    tree = tree[p]
  return tree


def convert_resnet18(state_dict: Union[str, os.PathLike, Mapping[str, np.ndarray]],
                     variables: Optional[Mapping] = None, *, in_channels: Optional[int] = None,
                     skip_head: bool = False) -> dict:
  """torchvision ResNet18 state dict (mapping or .npz path) → {'params', 'batch_stats'}.

  For ResNet(stem='imagenet'). `variables`, if given, are the freshly initialised variables
  of our model: the result is checked against their shapes, `in_channels` defaults to theirs,
  and with `skip_head=True` their 'fc' is kept (else the result has no 'fc'). With
  in_channels=1 a 3-channel first conv is summed over its input channels (grayscale). Leaves
  are float32 numpy arrays; `num_batches_tracked` entries are ignored.
  """
  if isinstance(state_dict, (str, os.PathLike)):
    with np.load(state_dict) as f:
      state_dict = {k: f[k] for k in f.files}
  if in_channels is None:
    kernel = _get(variables, ('params', 'conv1', 'kernel')) if variables is not None else None
    in_channels = 3 if kernel is None else kernel.shape[2]
  expected = torch_keys()
  given = {k for k in state_dict if not k.endswith('num_batches_tracked')}
  missing = sorted(k for k in expected if k not in given
                   and not (skip_head and k.startswith('fc.')))
  unexpected = sorted(given - set(expected))
  if missing or unexpected:
    raise ValueError(f'State dict does not match torchvision ResNet18: missing keys {missing}, '
                     f'unexpected keys {unexpected}.')

  out = {'params': {}, 'batch_stats': {}}
  for tkey, (col, path, kind) in expected.items():
    if skip_head and tkey.startswith('fc.'):
      continue
    w = np.asarray(state_dict[tkey], np.float32)
    if kind == 'conv':
      if tkey == 'conv1.weight' and w.shape[1] != in_channels:
        if in_channels == 1:
          # A grayscale image is R=G=B, so summing the RGB filters keeps the responses.
          w = w.sum(axis=1, keepdims=True)
        else:
          raise ValueError(f'conv1.weight has {w.shape[1]} input channels; cannot adapt to '
                           f'in_channels={in_channels} (only 3 → 1 is supported).')
      w = w.transpose(2, 3, 1, 0)   # OIHW → HWIO
    elif kind == 'linear' and w.ndim == 2:
      w = w.T                       # (out, in) → (in, out)
    _set(out[col], path, w)

  if variables is not None:
    if skip_head:
      _set(out['params'], ('fc',), {k: np.asarray(v) for k, v in
                                    _get(variables, ('params', 'fc')).items()})
    mismatched = []
    for col, path, _ in expected.values():
      ref, new = _get(variables, (col,) + path), _get(out, (col,) + path)
      if ref is None:
        mismatched.append(f'{col}/{"/".join(path)}: absent from the model')
      elif tuple(ref.shape) != new.shape:
        mismatched.append(f'{col}/{"/".join(path)}: model {tuple(ref.shape)} vs {new.shape}')
    if mismatched:
      hint = ' (different class count? pass skip_head=True)' if any(
          m.startswith('params/fc/') for m in mismatched) else ''
      raise ValueError(f'Imported weights do not fit the model{hint}: {mismatched}. The model '
                       'must be ResNet18 with stem="imagenet".')
  return out


def _main(argv):
  del argv
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit('torch is needed to read a .pth; run this where torch is installed and '
                     'copy the .npz over.') from e
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  obj = torch.load(FLAGS.pt, map_location='cpu', weights_only=True)
  for key in ('state_dict', 'model'):   # common checkpoint wrappers
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
  sd = {k.removeprefix('module.'): v.detach().cpu().numpy() for k, v in obj.items()}
  convert_resnet18(sd, skip_head=FLAGS.skip_head)   # fail here, not at training time
  np.savez(FLAGS.out, **sd)
  print(f'Wrote {len(sd)} arrays to {FLAGS.out}.')


if __name__ == '__main__':
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  flags.DEFINE_string('pt', None, 'torchvision ResNet18 state dict (.pth, torch.save).')
  flags.DEFINE_string('out', None, 'Output .npz (torch key → numpy array).')
  flags.DEFINE_bool('skip_head', False, 'Accept a checkpoint without fc.* keys.')
  flags.mark_flags_as_required(['pt', 'out'])
  app.run(_main)
