"""Which queue a job's message goes to (settings.JOB_ROUTING): one queue for every job, or
sharded by the job's location so that a backlog at one location (a flash sale, its hot
stock rows) never holds up another's jobs. Workers choose their shards with -Q
(WORKER_QUEUES); a sharded worker batches jobs of one location only (runner)."""

from django.conf import settings

LOCATION_QUEUE = "stockflow.jobs.location.{}"
SHARD_QUEUE = "stockflow.jobs.shard.{}"


def queue_for(location_id: int | None, routing: str, shards: int) -> str | None:
    """The queue of a job at this location; None: the default queue."""
    if routing == "single" or location_id is None:
        return None
    if routing == "location":
        return LOCATION_QUEUE.format(location_id)
    return SHARD_QUEUE.format(location_id % shards)


def job_queue(location_id: int | None) -> str | None:
    return queue_for(location_id, settings.JOB_ROUTING, settings.JOB_SHARDS)
