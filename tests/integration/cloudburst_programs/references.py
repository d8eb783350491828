"""Cloudburst's locality benchmark, shrunk: numpy arrays put in the store, passed to functions as references;
the user library inside functions (get of a list, get of a missing key, put of an Anna lattice imported in
the function body)."""

# ruff: noqa: UP031 - written as Cloudburst's examples are, %-formatting included

import json
import sys

import cloudburst.shared.proto.cloudburst_pb2  # binds the package `cloudburst`, which a function below uses
import numpy as np
from cloudburst.client.client import CloudburstConnection
from cloudburst.shared.reference import CloudburstReference

cloudburst_client = CloudburstConnection('127.0.0.1', '127.0.0.1', local=True)
results = {}


def dot(cloudburst, *arrays):
    import numpy as np

    total = 0.0
    for array in arrays:
        total += float(np.dot(array, array))
    return total


cloud_dot = cloudburst_client.register(dot, 'dot')

rng = np.random.default_rng(7)
inputs = [rng.random(1000) for _ in range(3)]
refs = ()
for i, inp in enumerate(inputs):
    key = 'array-%d' % i
    cloudburst_client.put_object(key, inp)
    refs += (CloudburstReference(key, True),)

results['dot'] = cloud_dot(*refs).get()
results['dot_expected'] = float(sum(np.dot(a, a) for a in inputs))

# references in a DAG's arg_map (the mobilenet / predserving benchmarks' shape)
cloudburst_client.register(lambda _, arr: arr * 2, 'double')
cloudburst_client.register(lambda _, arr: float(arr.sum()), 'total')
cloudburst_client.register_dag('pipeline', ['double', 'total'], [('double', 'total')])
results['dag_ref'] = cloudburst_client.call_dag(
    'pipeline', {'double': [CloudburstReference('array-0', True)]}, direct_response=True)
results['dag_ref_expected'] = float((inputs[0] * 2).sum())

# a numpy array comes back as one
results['array_result'] = cloudburst_client.get_function('double')(np.arange(4)).get()


def store_user(cloudburst, uid):
    import cloudpickle as cp
    from anna.lattices import LWWPairLattice

    cloudburst.put('user:%s' % uid, LWWPairLattice(0, cp.dumps({'uid': uid})))
    cloudburst.put('plain:%s' % uid, [uid, uid])
    found = cloudburst.get(['user:%s' % uid, 'plain:%s' % uid, 'missing:%s' % uid])
    lattice = found['user:%s' % uid]
    return {
        'lattice_type': type(lattice).__name__,
        'revealed': cp.loads(lattice.reveal()),
        'plain': found['plain:%s' % uid],
        'missing': found['missing:%s' % uid],
        'missing_single': cloudburst.get('missing:%s' % uid),
        'executor_id_is_str': isinstance(cloudburst.getid(), str),
    }


results['user_library'] = cloudburst_client.register(store_user, 'store_user')('u1').get()
# the client reads what the function put, lattice object included
lattice = cloudburst_client.get_object('user:u1')
results['client_sees_lattice'] = type(lattice).__name__

# a function whose global is the package `cloudburst` itself
def error_name(_, number):
    return cloudburst.shared.proto.cloudburst_pb2.CloudburstError.Name(number)


results['package_global'] = cloudburst_client.register(error_name, 'error_name')(6).get()

print('RESULTS ' + json.dumps(results, default=lambda a: a.tolist()))
sys.exit(0)
