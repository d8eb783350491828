"""Continuations (a dry-run call of a second DAG, called with the first one's result), arguments for functions
that are not sources, and what a Cloudburst program sees when things go wrong: a function that raises, a DAG or
function that does not exist."""

# ruff: noqa: UP031 - written as Cloudburst's examples are, %-formatting included
import json
import sys

from cloudburst.client.client import CloudburstConnection

cloud = CloudburstConnection('127.0.0.1', '127.0.0.1', local=True)
results = {}

cloud.register(lambda _, a: a + 1, 'incr')
cloud.register(lambda _, a: a * a, 'square')
cloud.register(lambda _, a: a * 2, 'double_it')
cloud.register(lambda _, fixed, a: fixed + a, 'add')
cloud.register_dag('first', ['incr', 'square'], [('incr', 'square')])
cloud.register_dag('then_double', ['double_it'], [])
cloud.register_dag('then_add', ['add'], [])

then = cloud.call_dag('then_double', {}, direct_response=True, dry_run=True)
results['continuation_direct'] = cloud.call_dag('first', {'incr': [1]}, direct_response=True, continuation=then)
then = cloud.call_dag('then_add', {'add': [100]}, dry_run=True)
results['continuation_future'] = cloud.call_dag('first', {'incr': [2]}, continuation=then).get()
try:
    cloud.call_dag('first', {'incr': [2]}, continuation=then, direct_response=True)
except RuntimeError as exc:
    results['continuation_mismatch'] = str(exc)

# arguments for an inner function come before its upstream results
cloud.register(lambda _, scale, offset, a: scale * a + offset, 'scale_by')
cloud.register_dag('incr_scale', ['incr', 'scale_by'], [('incr', 'scale_by')])
results['inner_args'] = cloud.call_dag('incr_scale', {'incr': [1], 'scale_by': [10, 5]}, direct_response=True)
results['inner_args_output_key'] = [
    cloud.call_dag('incr_scale', {'incr': 2, 'scale_by': [10, (1,)]}, output_key='scaled').get(),
    cloud.get_object('scaled')]


def divide(cloudburst, x):
    return 10 / x


cloud_divide = cloud.register(divide, 'divide')
try:
    cloud_divide(0).get()
except Exception as exc:  # noqa: BLE001 - the type is checked by the test
    results['raised'] = [type(exc).__name__, str(exc), exc.remote_traceback]

try:
    cloud.register_dag('broken', ['incr', 'nope'], [('incr', 'nope')])
except RuntimeError as exc:
    results['unregistered'] = str(exc)

try:
    cloud.call_dag('no_such_dag', {}, direct_response=True)
except Exception as exc:  # noqa: BLE001
    results['no_such_dag'] = type(exc).__name__

try:
    cloud.call_dag('first', {'incr': [1], 'nope': [3]}, direct_response=True)
except Exception as exc:  # noqa: BLE001
    results['args_for_unknown_function'] = [type(exc).__name__, str(exc)]

print('RESULTS ' + json.dumps(results))
sys.exit(0)
