"""Cloudburst's distributed-average benchmark, made exact: concurrent calls of one function find each other
through the store (each puts its messaging id, then polls for the others'), exchange values with send/recv,
and each returns the average of all. Usage: coordination.py N [ROUNDS] (the cluster needs more than N
executors)."""

# ruff: noqa: UP031 - written as Cloudburst's examples are, %-formatting included

import json
import sys
import uuid

from cloudburst.client.client import CloudburstConnection

cloudburst_client = CloudburstConnection('127.0.0.1', '127.0.0.1', local=True)


def avg(cloudburst, uid, eid, num_execs, val):
    import time

    import cloudpickle as cp
    from anna.lattices import LWWPairLattice

    deadline = time.time() + 30  # bounded: a peer that never runs fails the call instead of hanging it
    myid = cloudburst.getid()
    cloudburst.put('%s:%d' % (uid, eid), LWWPairLattice(0, cp.dumps(myid)))

    keyset = ['%s:%d' % (uid, i) for i in range(num_execs) if i != eid]
    locs = cloudburst.get(keyset)
    while None in locs.values():
        if time.time() > deadline:
            raise TimeoutError('%s: peers never registered: %s' % (myid, [k for k, v in locs.items() if v is None]))
        time.sleep(0.005)
        locs = cloudburst.get(keyset)
    procs = {cp.loads(locs[key].reveal()) for key in locs}

    for dst in procs:
        cloudburst.send(dst, cp.dumps((eid, val)))

    received = {eid: val}
    while len(received) < num_execs:
        if time.time() > deadline:
            raise TimeoutError('%s: heard from %s only' % (myid, sorted(received)))
        for _sender, msg in cloudburst.recv():
            peer, value = cp.loads(msg)
            received[peer] = value
        time.sleep(0.002)

    return sum(received.values()) / num_execs, sorted(received), myid


cloud_avg = cloudburst_client.register(avg, 'avg')
if cloud_avg:
    print('Successfully registered avg function.')
else:
    sys.exit(1)

n = int(sys.argv[1])
rounds = []
for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 1):
    uid = str(uuid.uuid4())
    vals = [i * 7 + 3 for i in range(n)]
    futures = [cloud_avg(uid, i, n, vals[i]) for i in range(n)]
    results = [future.get(timeout=60) for future in futures]
    rounds.append({'expected': sum(vals) / n, 'averages': [r[0] for r in results],
                   'heard': [r[1] for r in results], 'executors': [r[2] for r in results]})

print('RESULTS ' + json.dumps(rounds))
sys.exit(0)
