"""stockflow's chaos run (issue 5 §3): the whole stack on its own embedded PostgreSQL and
Redis, load through the HTTP API, and faults injected while it runs.

    python -m chaos [--sales N] [--refunds M] [...]      (python -m chaos --help)
    python -m chaos --broker rabbitmq                    (a private RabbitMQ node)

It starts fresh embedded servers in a temporary state dir (never the machine's shared
services, never a process it did not start), migrates, runs web (gunicorn), two Celery
workers and beat as its own subprocesses, submits sales, payments and refunds with
duplicates, over-refunds and malformed requests, and meanwhile kill -9s worker
processes, restarts the broker (Redis: its data gone; RabbitMQ: kill -9 of a private node
started for the run, harness/rabbitmq_node.py, its quorum queues back from disk) and
PostgreSQL. Then it waits for every job to finish and checks SPEC §6: nothing lost,
nothing applied twice, the ledger clean, no 500s, outcomes matching requests. One JSON
summary goes to stdout; the exit status is non-zero on any violation.

Modules: `stack` (servers and processes), `workload` (the HTTP client side and what it
recorded), `checks` (the verdict from the database), `harness` (the run and the CLI).
"""
