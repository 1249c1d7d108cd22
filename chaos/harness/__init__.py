"""The fault-injection harness behind ``chaos/run.py``, one room per concern.

- ``cli``: the command line (``--smoke``, fault times, ports) and the modes a run covers.
- ``constants``: names shared with the chaos project (modes, operations, task names, queue).
- ``shell``: the harness's own log line, running commands, finding binaries, HarnessError.
- ``postgres``, ``brokers``: the private services it cuts (PostgreSQL cluster and PgBouncer;
  RabbitMQ vhost or Redis), never the shared ones.
- ``workers``: the pool of ``celery worker`` process groups; kills and replacements.
- ``timeline``: what happened when (kills, restarts, cuts, publishes), read by the report.
- ``database``: the harness's own Django connection and its claim counts.
- ``load``: the plan of keys (every key once per mode, a share twice) and the publisher.
- ``phases``: the fault phase and the drain.
- ``worker_logs``, ``doubles``, ``traces``, ``accounting``: reading the outcome: per key and
  mode from the ``SideEffect`` table, each double explained by a kill (or not), each lost key
  traced through the worker logs.
- ``report``, ``markdown``: the JSON report with its targets, and the table printed at the end.
- ``main``: one run, start to finish, with its clean-up.
"""
