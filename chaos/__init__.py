"""stockflow's chaos run (issue 5 §3): the whole stack on its own embedded PostgreSQL and
Redis, load through the HTTP API, and faults injected while it runs.

    python -m chaos [--sales N] [--refunds M] [...]      (python -m chaos --help)

It starts fresh embedded servers in a temporary state dir (never the machine's shared
services, never a process it did not start), migrates, runs web (gunicorn), two Celery
workers and beat as its own subprocesses, submits sales, payments and refunds with
duplicates, over-refunds and malformed requests, and meanwhile kill -9s worker
processes, restarts Redis (its data gone) and PostgreSQL. Then it waits for every job
to finish and checks SPEC §6: nothing lost, nothing applied twice, the ledger clean, no
500s, outcomes matching requests. One JSON summary goes to stdout; the exit status is
non-zero on any violation.

Modules: `stack` (servers and processes), `workload` (the HTTP client side and what it
recorded), `checks` (the verdict from the database), `harness` (the run and the CLI).
"""
