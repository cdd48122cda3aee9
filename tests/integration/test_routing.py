"""Routing by location (JOB_ROUTING, workers/routing.py) with real prefork workers, one per
location's queue: a flash-sale backlog at one location does not hold up another's jobs.

The backlog: FLASH_JOBS jobs at the flash-sale location, accepted before any worker starts
and settled one per transaction (JOB_BATCH_SIZE=1), so that it lasts seconds on this
machine. Then the calm location's jobs arrive, a few at a time, while the test checks a
backlog of at least a quarter of it is still there. Bound: with a queue per
location every calm job is done within CALM_BOUND_S of its accept while the flash backlog
is still draining. The same run on one shared queue (`single`) is the control: there the
calm jobs wait behind (almost) the whole backlog — the measurement can see the delay.
"""

import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db.models import Q

from stockflow.stock.models import Job, Location
from tests.api_helpers import pay, product, receive, sale, wait_until
from workers import routing

FLASH_JOBS = 400
CALM_JOBS = 10
CALM_BOUND_S = 2.0


def _stock(client, code: str, sku: str, quantity: int) -> Location:
    location = Location.objects.get_or_create(code=code)[0]
    product(client, sku)
    receive(client, sku, "L1", quantity, 90, location=code)
    return location


def _accept(client, prefix: str, sku: str, code: str, n: int) -> list[str]:
    with ThreadPoolExecutor(8) as pool:
        sales = list(
            pool.map(lambda i: sale(client, f"{prefix}-{i}", [(sku, 1)], location=code), range(n))
        )
        return list(pool.map(lambda s: pay(client, s["id"])["id"], sales))


def _finished(job_ids: list[str], timeout: float) -> list[Job]:
    def done():
        jobs = list(Job.objects.filter(pk__in=job_ids))
        return jobs if len(jobs) == len(job_ids) and all(j.is_terminal for j in jobs) else None

    return wait_until(done, timeout, f"{len(job_ids)} jobs to finish", interval=0.2)


def _queues(mode: str, location: Location) -> str:
    if mode == "single":
        return "celery,stockflow.periodic"
    return f"{routing.LOCATION_QUEUE.format(location.pk)},stockflow.periodic"


@pytest.mark.parametrize("mode", ["location", "single"])
def test_a_flash_sale_backlog_at_one_location_does_not_delay_another(
    mode, client, worker_factory, settings
):
    settings.JOB_ROUTING = mode  # the live server publishes in this process
    flash = _stock(client, "FLASH-SITE", "HOT", FLASH_JOBS)
    calm = _stock(client, "CALM-SITE", "MILD", CALM_JOBS)
    # The backlog is accepted while no worker runs; then each location's worker starts.
    flash_ids = _accept(client, "S-FLASH", "HOT", "FLASH-SITE", FLASH_JOBS)
    calm_sales = [sale(client, f"S-CALM-{i}", [("MILD", 1)], "CALM-SITE") for i in range(CALM_JOBS)]
    worker_env = {"JOB_ROUTING": mode, "JOB_BATCH_SIZE": 1}
    worker_factory(concurrency=1, WORKER_QUEUES=_queues(mode, flash), **worker_env)
    worker_factory(concurrency=1, WORKER_QUEUES=_queues(mode, calm), **worker_env)
    calm_ids = []
    for s in calm_sales:
        calm_ids.append(pay(client, s["id"])["id"])
        time.sleep(0.05)

    calm_jobs = _finished(calm_ids, 120)
    calm_done_at = max(j.finished_at for j in calm_jobs)
    calm_accepted_at = min(j.created_at for j in calm_jobs)
    backlog, flash_left = (
        Job.objects.filter(pk__in=flash_ids)
        .filter(Q(finished_at__isnull=True) | Q(finished_at__gt=at))
        .count()
        for at in (calm_accepted_at, calm_done_at)
    )
    flash_jobs = _finished(flash_ids, 300)

    latencies = sorted((j.finished_at - j.created_at).total_seconds() for j in calm_jobs)
    figures = {
        "routing": mode,
        "calm_latency_s": {
            "median": round(statistics.median(latencies), 3),
            "max": round(latencies[-1], 3),
        },
        "flash_backlog_when_calm_accepted": backlog,
        "flash_jobs_unfinished_when_calm_done": flash_left,
        "flash_backlog_drained_in_s": round(
            (
                max(j.finished_at for j in flash_jobs) - min(j.finished_at for j in flash_jobs)
            ).total_seconds(),
            1,
        ),
        "bound_s": CALM_BOUND_S,
    }
    print("routing figures:", json.dumps(figures))
    assert {j.status for j in calm_jobs + flash_jobs} == {"succeeded"}
    assert {j.location_id for j in calm_jobs} == {calm.pk}
    assert backlog >= FLASH_JOBS // 4, f"no backlog to measure against: {figures}"
    if mode == "location":
        assert flash_left > 0, f"the backlog was gone before the calm jobs were: {figures}"
        assert latencies[-1] <= CALM_BOUND_S, figures
    else:  # the calm jobs waited behind (almost) the whole backlog they found
        assert flash_left <= backlog // 10, f"no delay to see: {figures}"
