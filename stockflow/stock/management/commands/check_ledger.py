import json

from django.core.management.base import BaseCommand, CommandError

from stockflow.stock import invariants


class Command(BaseCommand):
    help = "Verify the stock ledger invariants (SPEC §6 1-3); exit non-zero on any violation."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def handle(self, *args, **options):
        def step(name, done, total, seconds):
            # On stderr, one line per check: a big ledger takes tens of seconds.
            self.stderr.write(f"[{done}/{total}] {name} ({seconds:.1f} s)")

        report = invariants.check(on_step=step)
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "clean": report.clean,
                        "counts": report.counts,
                        "unfinished_jobs": report.unfinished_jobs,
                        "violations": {
                            k: [list(map(str, r)) for r in v] for k, v in report.violations.items()
                        },
                    }
                )
            )
        else:
            for name, rows in report.violations.items():
                self.stdout.write(
                    f"{'FAIL' if rows else 'ok  '} {name}" + (f": {rows[:5]}" if rows else "")
                )
            self.stdout.write("counts: " + ", ".join(f"{k}={v}" for k, v in report.counts.items()))
            unfinished = ", ".join(f"{k}={v}" for k, v in report.unfinished_jobs.items()) or "none"
            self.stdout.write(f"jobs not yet finished: {unfinished}")
        if not report.clean:
            raise CommandError("ledger invariants violated")
        if not options["json"]:
            self.stdout.write(self.style.SUCCESS("ledger clean"))
