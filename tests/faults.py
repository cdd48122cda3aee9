"""Faults injected into the real database for tests: an unexpected error on one sale's
UPDATE to `paid`, so that its sale.paid job fails with code `error` (not a business
outcome) in a real worker, and the repair."""

import psycopg
from django.conf import settings
from django.db import connection
from kombu import Connection


def reject_paid(number: str) -> None:
    """Until `allow_paid()`: the UPDATE of sale `number` to `paid` raises."""
    with connection.cursor() as cur:
        cur.execute(
            """
            CREATE OR REPLACE FUNCTION tests_reject_paid() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.status = 'paid' AND NEW.number = %s THEN
                RAISE EXCEPTION 'payment hook down';
              END IF;
              RETURN NEW;
            END $$;
            DROP TRIGGER IF EXISTS tests_reject_paid ON sales_sale;
            CREATE TRIGGER tests_reject_paid BEFORE UPDATE ON sales_sale
              FOR EACH ROW EXECUTE FUNCTION tests_reject_paid();
            """,
            [number],
        )


def allow_paid() -> None:
    with connection.cursor() as cur:
        cur.execute(
            "DROP TRIGGER IF EXISTS tests_reject_paid ON sales_sale;"
            "DROP FUNCTION IF EXISTS tests_reject_paid();"
        )


def queued_messages(queue: str = "celery") -> int:
    """Messages the broker holds for the queue, not handed to a worker (Redis or RabbitMQ)."""
    with Connection(settings.CELERY_BROKER_URL) as conn:
        return conn.default_channel.queue_declare(queue, passive=True).message_count


def lose_queued_messages(queue: str = "celery") -> None:
    """The broker lost what it held for the job queue (nothing but a re-send runs those jobs)."""
    with Connection(settings.CELERY_BROKER_URL) as conn:
        conn.default_channel.queue_purge(queue)


def lock_holder() -> psycopg.Connection:
    """Another PostgreSQL session, as the test's own connection is configured, inside a
    transaction exempt from idle_in_transaction_session_timeout (SET LOCAL: nothing outlives
    it, also behind PgBouncer): the rows it locks stay held as long as the test needs."""
    holder = psycopg.connect(**connection.get_connection_params())
    holder.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
    return holder
