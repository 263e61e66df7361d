"""histojax/data/pipeline.py: eval_batches pads and masks so every example counts once."""
import numpy as np
import pytest

from histojax.data import pipeline


@pytest.mark.parametrize('n,batch,hosts', [(37, 16, 1), (37, 16, 2), (64, 16, 4), (5, 8, 2)])
def test_eval_batches_count_every_example_once(n, batch, hosts):
  arrays = {'index': np.arange(n), 'label': np.zeros(n, np.int32)}
  per_host = [list(pipeline.eval_batches(arrays, global_batch=batch, process_index=p,
                                         process_count=hosts)) for p in range(hosts)]
  assert len({len(b) for b in per_host}) == 1  # hosts stay in lockstep
  seen = np.concatenate([b['index'][b['mask'] > 0] for bs in per_host for b in bs])
  np.testing.assert_array_equal(np.sort(seen), np.arange(n))
