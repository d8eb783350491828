"""Cloudburst's README and docs/function-execution.md, as a program: functions, futures, a DAG, the store."""

# ruff: noqa: UP031 - written as Cloudburst's examples are, %-formatting included

import json
import sys

from cloudburst.client.client import CloudburstConnection
from cloudburst.shared.proto.cloudburst_pb2 import DAG_ALREADY_EXISTS, NO_CLOUDBURST_ERROR, NO_SUCH_DAG, CloudburstError

local_cloud = CloudburstConnection('127.0.0.1', '127.0.0.1', local=True)
results = {}

incr = lambda _, a: a + 1  # noqa: E731 - as Cloudburst's docs write it
cloud_incr = local_cloud.register(incr, 'incr')
results['incr'] = cloud_incr(1).get()


def square(cloudburst, x):
    return x * x


cloud_sq = local_cloud.register(square, 'square')
results['square'] = cloud_sq(2).get()

success, error = local_cloud.register_dag('dag', ['incr', 'square'], [('incr', 'square')])
results['register_dag'] = [success, CloudburstError.Name(error)]
assert error == NO_CLOUDBURST_ERROR
again = local_cloud.register_dag('dag', ['incr', 'square'], [('incr', 'square')])
results['register_again'] = [again[0], CloudburstError.Name(again[1])]
assert again == (False, DAG_ALREADY_EXISTS)

results['dag_future'] = local_cloud.call_dag('dag', {'incr': [1]}).get()
results['dag_direct'] = local_cloud.call_dag('dag', {'incr': 3}, direct_response=True)

# many futures in flight at once, read back in order
futures = [cloud_sq(i) for i in range(10)]
results['many'] = [f.get() for f in futures]

# exec_func returns a response id; a future built from it reads the stored result
from cloudburst.shared.future import CloudburstFuture  # noqa: E402
from cloudburst.shared.serializer import Serializer  # noqa: E402

rid = local_cloud.exec_func('square', [7])
results['exec_func'] = CloudburstFuture(rid, local_cloud.kvs_client, Serializer()).get()

# a tuple result spreads into the next function's arguments, as on Cloudburst
local_cloud.register(lambda _, x: (x, x + 1), 'pair')
local_cloud.register(lambda _, a, b: a * 10 + b, 'join_pair')
local_cloud.register_dag('pairs', ['pair', 'join_pair'], [('pair', 'join_pair')])
results['tuple_spread'] = local_cloud.call_dag('pairs', {'pair': [4]}, direct_response=True)

# output_key: the result is written under that key, and the future reads it from there
future = local_cloud.call_dag('dag', {'incr': [4]}, output_key='dag-output')
results['output_key_future'] = [future.obj_id, future.get()]
results['output_key_object'] = local_cloud.get_object('dag-output')

# a future passed as an argument is its value
results['future_argument'] = cloud_sq(cloud_incr(2)).get()

# Cloudburst's consistency modes: NORMAL runs as cbctl's lww, SINGLE and MULTI as its causal mode
from cloudburst.shared.proto.cloudburst_pb2 import MULTI, SINGLE  # noqa: E402

results['multi'] = local_cloud.call_dag('dag', {'incr': [5]}, consistency=MULTI, direct_response=True)
results['single_future'] = local_cloud.call_dag('dag', {'incr': [6]}, consistency=SINGLE).get()


def write_read(cloudburst, key, value):
    cloudburst.put(key, value)
    return cloudburst.get(key)


local_cloud.register(write_read, 'write_read')
local_cloud.register_dag('wr', ['write_read'], [])
from cloudburst.shared.proto.cloudburst_pb2 import NORMAL  # noqa: E402

# a causal read is the list of the key's concurrent values, as in Cloudburst's causal modes
results['causal_get'] = [local_cloud.call_dag('wr', {'write_read': ['k-normal', 5]}, direct_response=True,
                                              consistency=NORMAL),
                         local_cloud.call_dag('wr', {'write_read': ['k-multi', 5]}, direct_response=True,
                                              consistency=MULTI)]

# the store
local_cloud.put_object('greeting', {'hello': 'world'})
results['get_object'] = local_cloud.get_object('greeting')
results['get_missing'] = local_cloud.get_object('no-such-key')

results['get_function_missing'] = local_cloud.get_function('nope') is None
results['get_function'] = local_cloud.get_function('square')(5).get()
local_cloud.list()

results['delete_dag'] = [local_cloud.delete_dag('pairs')[0], local_cloud.delete_dag('pairs') == (False, NO_SUCH_DAG)]

print('RESULTS ' + json.dumps(results))
sys.exit(0)
