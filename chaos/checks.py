"""The verdict, read from the database once every job has finished: what the client was
told (the Recorder) against what stockflow stored. SPEC §6 invariants 1-3 come from
`manage.py check_ledger --json`; the queries here add the job-level ones (§6.4: every
accepted job finished, none lost, none applied twice) and the outcome accounting."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict

import psycopg

from stockflow.platform.errors import STOCK_SHORTAGE_CODES

from .workload import Recorder, Workload

PAY, REFUND = "sale.paid", "sale.refund"
PAY_BUSINESS_CODES = STOCK_SHORTAGE_CODES


def connect(url: str, timeout: float = 60) -> psycopg.Connection:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return psycopg.connect(url, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def job_status_counts(url: str) -> dict[str, int]:
    with connect(url) as conn:
        return dict(
            conn.execute("SELECT status, COUNT(*) FROM jobs_job GROUP BY status").fetchall()
        )


def sale_id_by_number(url: str, number: str) -> int | None:
    with connect(url) as conn:
        row = conn.execute("SELECT id FROM sales_sale WHERE number = %s", (number,)).fetchone()
    return row[0] if row else None


def _rows(conn, sql: str, params=()) -> list[tuple]:
    return conn.execute(sql, params).fetchall()


def verify(url: str, rec: Recorder, load: Workload, *, allow_error_jobs: bool = False) -> dict:
    """Run every check, record violations on `rec`, return the job-side figures."""
    checks: dict[str, str] = {}

    def check(name: str, bad: list, **detail) -> None:
        checks[name] = "ok" if not bad else f"FAIL ({len(bad)})"
        if bad:
            rec.violation(
                name,
                examples=[list(map(str, b)) if isinstance(b, tuple) else b for b in bad[:5]],
                count=len(bad),
                **detail,
            )

    with connect(url) as conn:
        jobs = {
            str(r[0]): {
                "kind": r[1],
                "status": r[2],
                "attempts": r[3],
                "error_code": r[4],
                "sale_id": r[5],
                "outcome": (r[6] or {}).get("outcome") if isinstance(r[6], dict) else None,
                "error_message": r[7],
            }
            for r in _rows(
                conn,
                "SELECT id, kind, status, attempts, error_code, sale_id, result, error_message "
                "FROM jobs_job",
            )
        }
        accepted_ids = set(rec.accepted.values())

        # §6.4: every accepted job exists and finished; no job the client never heard of.
        check("accepted_job_missing", sorted(accepted_ids - jobs.keys()))
        check(
            "accepted_job_not_finished",
            [
                (j, jobs[j]["status"], jobs[j]["attempts"])
                for j in sorted(accepted_ids & jobs.keys())
                if jobs[j]["status"] not in ("succeeded", "failed")
            ],
        )
        check("job_never_returned_to_client", sorted(jobs.keys() - accepted_ids))
        # One job per distinct idempotency key, and no two keys sharing a job.
        check(
            "distinct_keys_vs_jobs",
            []
            if len(rec.accepted) == len(accepted_ids)
            else [(len(rec.accepted), len(accepted_ids))],
        )

        # Never applied twice: one job's moves per sale, moves only from succeeded jobs.
        check(
            "sale_out_from_several_jobs",
            _rows(
                conn,
                """
            SELECT l.sale_id, COUNT(DISTINCT m.job_id) FROM inventory_stockmove m
            JOIN sales_saleline l ON l.id = m.sale_line_id
            WHERE m.kind = 'SALE_OUT' GROUP BY l.sale_id HAVING COUNT(DISTINCT m.job_id) > 1""",
            ),
        )
        check(
            "moves_of_unsucceeded_jobs",
            _rows(
                conn,
                """
            SELECT m.id, m.kind, j.id, j.status FROM inventory_stockmove m JOIN jobs_job j ON j.id = m.job_id
            WHERE j.status <> 'succeeded' LIMIT 50""",
            ),
        )
        check(
            "job_moves_without_job",
            _rows(
                conn,
                """
            SELECT id, kind FROM inventory_stockmove WHERE kind IN ('SALE_OUT', 'REFUND_IN') AND job_id IS NULL
            LIMIT 50""",
            ),
        )
        check(
            "paid_job_moves_not_lines",
            _rows(
                conn,
                """
            SELECT j.id, lines.q, COALESCE(moves.q, 0) FROM jobs_job j
            JOIN (SELECT sale_id, SUM(quantity) q FROM sales_saleline GROUP BY sale_id) lines
              ON lines.sale_id = j.sale_id
            LEFT JOIN (SELECT job_id, -SUM(quantity) q FROM inventory_stockmove WHERE kind = 'SALE_OUT'
                       GROUP BY job_id) moves ON moves.job_id = j.id
            WHERE j.kind = %s AND j.status = 'succeeded' AND lines.q <> COALESCE(moves.q, 0) LIMIT 50""",
                (PAY,),
            ),
        )
        check(
            "paid_job_vs_sale_status",
            _rows(
                conn,
                """
            SELECT s.id, s.status, COUNT(j.id) FILTER (WHERE j.status = 'succeeded') FROM sales_sale s
            LEFT JOIN jobs_job j ON j.sale_id = s.id AND j.kind = %s GROUP BY s.id, s.status
            HAVING (s.status IN ('paid', 'partially_refunded', 'refunded'))
                   <> (COUNT(j.id) FILTER (WHERE j.status = 'succeeded') = 1) LIMIT 50""",
                (PAY,),
            ),
        )
        check(
            "refund_rows_vs_job_status",
            _rows(
                conn,
                """
            SELECT j.id, j.status, COUNT(r.id) FROM jobs_job j LEFT JOIN sales_refund r ON r.job_id = j.id
            WHERE j.kind = %s GROUP BY j.id, j.status
            HAVING (j.status = 'succeeded') <> (COUNT(r.id) = 1) OR COUNT(r.id) > 1 LIMIT 50""",
                (REFUND,),
            ),
        )

        # What each refund job wrote is what its request asked for, and per line the
        # refunded total is the sum of the refunds that succeeded.
        written: dict[str, dict[int, int]] = defaultdict(dict)
        for job_id, line_id, qty in _rows(
            conn,
            """
                SELECT r.job_id, rl.sale_line_id, rl.quantity FROM sales_refund r
                JOIN sales_refundline rl ON rl.refund_id = r.id""",
        ):
            written[str(job_id)][line_id] = qty
        per_job = [
            (j, amounts, written.get(j, {}))
            for j, (_, amounts) in load.refund_amounts.items()
            if jobs.get(j, {}).get("status") == "succeeded" and written.get(j, {}) != amounts
        ]
        check("refund_lines_vs_request", per_job)
        expected_line = Counter()
        for j, (_, amounts) in load.refund_amounts.items():
            if jobs.get(j, {}).get("status") == "succeeded":
                expected_line.update(amounts)
        stored_line = Counter(
            dict(_rows(conn, "SELECT sale_line_id, SUM(quantity) FROM sales_refundline GROUP BY 1"))
        )
        check(
            "refunded_per_line_vs_client",
            [
                (lid, expected_line[lid], stored_line[lid])
                for lid in set(expected_line) | set(stored_line)
                if expected_line[lid] != stored_line[lid]
            ],
        )

        # Outcomes the requests allow: a pay job fails only for lack of (unexpired) stock;
        # a refund, sent one at a time per sale within what is left, must succeed.
        check(
            "pay_failed_unexpectedly",
            [
                (j, v["error_code"], v["error_message"][:120])
                for j, v in jobs.items()
                if v["kind"] == PAY
                and v["status"] == "failed"
                and v["error_code"] not in PAY_BUSINESS_CODES
                and not (allow_error_jobs and v["error_code"] == "error")
            ],
        )
        check(
            "refund_failed_unexpectedly",
            [
                (j, v["error_code"], v["error_message"][:120])
                for j, v in jobs.items()
                if v["kind"] == REFUND
                and v["status"] == "failed"
                and not (allow_error_jobs and v["error_code"] == "error")
            ],
        )

        by_kind_status = Counter((v["kind"], v["status"]) for v in jobs.values())
        codes = Counter(
            f"{v['kind']}:{v['error_code']}" for v in jobs.values() if v["status"] == "failed"
        )
        outcomes = Counter(
            f"{v['kind']}:{v['outcome']}" for v in jobs.values() if v["status"] == "succeeded"
        )
        attempts = Counter(v["attempts"] for v in jobs.values())
        sales_by_status = dict(
            _rows(conn, "SELECT status, COUNT(*) FROM sales_sale GROUP BY status")
        )

    return {
        "checks": checks,
        "jobs": {
            "accepted": len(accepted_ids),
            "in_database": len(jobs),
            "by_kind_status": {f"{k}:{s}": n for (k, s), n in sorted(by_kind_status.items())},
            "failed_by_code": dict(sorted(codes.items())),
            "succeeded_by_outcome": dict(sorted(outcomes.items())),
            "attempts_histogram": {str(k): n for k, n in sorted(attempts.items())},
        },
        "sales_by_status": sales_by_status,
    }


def check_ledger(stack) -> dict:
    proc = stack.manage("check_ledger", "--json")
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {
            "clean": False,
            "exit_code": proc.returncode,
            "error": (proc.stdout + proc.stderr)[-800:],
        }
    report["exit_code"] = proc.returncode
    return report
