"""`python -m bench`: stockflow's benchmark against the queue's own floor (issue 5, §1).

Everything runs against stockflow's *own* embedded PostgreSQL and Redis in a temporary
state dir (never the machine's shared services), with web (bin/web), worker (bin/worker)
and, for the comparison, a synchronous-path web (gunicorn serving bench.sync_app) as
subprocesses that this package starts and stops itself. See bench/run.py for the phases.
"""
