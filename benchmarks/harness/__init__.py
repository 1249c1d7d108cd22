"""The benchmark driver behind ``benchmarks/run.py``, one room per concern.

- ``config``: the command line (parsed on import), the private queue, the environment the
  Django project (``benchproject``) and the workers read; the driver's log line.
- ``variants``: what is compared: the variants (a)-(e), the two bodies, the extra workers and
  the targets each is held to.
- ``services``: the scratch databases (this tree's and the ``--before-ref`` one), the queue,
  and the Redis the workers' signal handlers write their timings to.
- ``worker``: the one real ``celery worker`` per compared tree or setting, paused between runs.
- ``runs``: runs against a worker: publish, wait, collect; throughput, paced latency, traced
  round trips.
- ``floor``: the in-process floor (raw statements vs the claims layer vs the decorator).
- ``scale``: claim latency at 10,000 and 1,000,000 rows, retention purges, the admin changelist.
- ``measures``: median / p99 / mean summaries of timings.
- ``machine``: the machine, versions and library revision a run measured.
- ``report``: the Markdown report and its targets.
- ``main``: one run, phase by phase, with its results file.

Imported as the top-level package ``harness`` (``benchmarks/`` is the script's directory, on
``sys.path`` like ``benchapp`` and ``benchproject``).
"""
