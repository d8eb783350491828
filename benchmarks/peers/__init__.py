"""Side-by-side benchmarks of cbctl, Ray and Dask: the same workloads on each, in one run.

    python -m benchmarks.peers [--calls N] [--only cbctl,ray,dask] [--rounds R] [--plot FILE.png]

- ``workloads.py``: what is measured (names, expected results, the timing loops), shared by every system;
- ``system_cbctl.py``, ``system_ray.py``, ``system_dask.py``: each workload written idiomatically for one system;
- ``runner.py``: one round of one system in a fresh process (cold start, warm-up, every workload);
- ``driver.py``: the command line; alternates systems round by round and collects their samples;
- ``report.py``: pure statistics, ratios to cbctl, the table, the JSON line and the chart.

Ray and Dask come with the ``bench`` extra (``pip install -e '.[bench]'``); a missing one is skipped with a note.
"""
