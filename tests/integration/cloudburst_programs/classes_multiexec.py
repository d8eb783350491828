"""Classes (``(Class, init_args)`` and a bare class) in DAGs, and MULTIEXEC functions with invalid results."""

# ruff: noqa: UP031 - written as Cloudburst's examples are, %-formatting included

import json
import sys

from cloudburst.client.client import CloudburstConnection

cloud = CloudburstConnection('127.0.0.1', '127.0.0.1', local=True)
results = {}


class Scaler:
    def __init__(self, cloudburst, factor):
        self.factor = factor
        self.calls = 0

    def run(self, cloudburst, x):
        self.calls += 1  # the instance lives on in its executor between calls
        return x * self.factor


class Describe:
    def __init__(self, cloudburst):
        self.prefix = 'value='

    def run(self, cloudburst, x):
        return self.prefix + str(x)


cloud.register((Scaler, 3), 'scale')
cloud.register(Describe, 'describe')
cloud.register_dag('describe_scaled', ['scale', 'describe'], [('scale', 'describe')])
results['classes'] = [cloud.call_dag('describe_scaled', {'scale': [i]}, direct_response=True) for i in range(3)]

# MULTIEXEC: `check` runs once per upstream result as it arrives; its invalid results (None) are dropped, and
# what follows gets the first valid one
cloud.register(lambda _, x: x, 'source_a')
cloud.register(lambda _, x: x, 'source_b')
cloud.register(lambda _, x: x, 'source_c')
cloud.register(lambda _, x: x if x > 0 else None, 'check')
cloud.register(lambda _, x: 'winner:%s' % x, 'announce')
ok, error = cloud.register_dag(
    'race', ['source_a', 'source_b', 'source_c', ('check', [None]), 'announce'],
    [('source_a', 'check'), ('source_b', 'check'), ('source_c', 'check'), ('check', 'announce')])
results['race_registered'] = ok
args = {'source_a': [-1], 'source_b': [10], 'source_c': [-5]}
results['race'] = cloud.call_dag('race', args, direct_response=True)
results['race_future'] = cloud.call_dag('race', args).get()

# a MULTIEXEC sink: the caller gets its first valid result
cloud.register_dag('race_to_sink', ['source_a', 'source_b', ('check', [None])],
                   [('source_a', 'check'), ('source_b', 'check')])
results['race_sink'] = cloud.call_dag('race_to_sink', {'source_a': [-3], 'source_b': [7]}, direct_response=True)

# every result invalid: the call fails (Cloudburst never answered it)
try:
    cloud.call_dag('race_to_sink', {'source_a': [-3], 'source_b': [-7]}, direct_response=True)
    results['race_none_valid'] = 'no error'
except Exception as exc:  # noqa: BLE001 - the type is checked by the test
    results['race_none_valid'] = type(exc).__name__ + ': ' + str(exc)

# a batching function receives a list per parameter (one entry per queued call) and returns a list of results
def add_pairs(cloudburst, xs, ys):
    return [x + y for x, y in zip(xs, ys)]


cloud.register(add_pairs, 'add_pairs')
cloud.register_dag('batched', ['add_pairs'], [], batching_functions=['add_pairs'])
results['batched'] = [cloud.call_dag('batched', {'add_pairs': [i, 10]}).get() for i in range(3)]

print('RESULTS ' + json.dumps(results))
sys.exit(0)
