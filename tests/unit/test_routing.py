"""Which queue a job goes to (workers/routing.py)."""

import pytest

from workers.routing import queue_for


def test_one_queue_for_every_job_by_default():
    assert queue_for(7, "single", 4) is None  # Celery's default queue


def test_a_queue_per_location():
    assert queue_for(7, "location", 4) == "stockflow.jobs.location.7"
    assert queue_for(8, "location", 4) != queue_for(7, "location", 4)


@pytest.mark.parametrize(("location", "shard"), [(1, 1), (4, 0), (7, 3), (8, 0)])
def test_hashed_shards_spread_locations_over_a_fixed_set_of_queues(location, shard):
    assert queue_for(location, "hash", 4) == f"stockflow.jobs.shard.{shard}"


def test_a_job_without_a_location_takes_the_default_queue():
    assert queue_for(None, "location", 4) is None
