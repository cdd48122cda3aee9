"""The scraped-names snapshot (monitoring/scraped-metric-names.txt): which metric names web,
worker and celery-exporter really expose, and how to read a text exposition's names.

monitoring/integration.py writes it; tests/integration/test_monitoring.py checks rules and
dashboards against it and tests/integration/test_metrics.py checks it against live processes.
"""

import re
from pathlib import Path

MON = Path(__file__).resolve().parent

# Written by `monitoring/integration.py --write-snapshot` from real scrapes of web, worker and
# celery-exporter after its scripted load (failures included). tests/integration/test_metrics.py checks it
# against live expositions: a name the code no longer exposes (renamed, dropped, invented)
# fails there until the snapshot is regenerated.
SNAPSHOT = MON / "scraped-metric-names.txt"
SNAPSHOT_TARGETS = ("web", "worker", "celery-exporter")
STOCKFLOW_TARGETS = ("web", "worker")
_FAMILY_SAMPLES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


def exposition_names(text: str) -> tuple[dict[str, str], set[str]]:
    """({family: type} from the `# TYPE` lines, {sample name}) of a text exposition. A counter's
    family is named with its `_total` there, as its samples are."""
    types, samples = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                types[parts[2]] = parts[3]
        elif line.strip() and not line.startswith("#"):
            m = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
            if m:
                samples.add(m.group(0))
    return types, samples


def names_of(types: dict[str, str], samples: set[str]) -> set[str]:
    """Every series name a scrape can yield: the samples, and each declared family's sample
    names (a histogram's _bucket/_sum/_count), samples or not (never *_created: dropped)."""
    names = set(samples)
    for name, kind in types.items():
        names |= {name + suffix for suffix in _FAMILY_SAMPLES.get(kind, ("",))}
    return names


def read_snapshot(path: Path = SNAPSHOT) -> dict[str, tuple[dict[str, str], set[str]]]:
    """{target: ({family: type}, {sample name})}"""
    out: dict[str, tuple[dict[str, str], set[str]]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        target, source, name, *kind = line.split()
        types, samples = out.setdefault(target, ({}, set()))
        if source == "type" and len(kind) == 1:
            types[name] = kind[0]
        elif source == "sample" and not kind:
            samples.add(name)
        else:
            raise ValueError(
                f"{path.name}:{n}: not '<target> type <name> <kind>' or '<target> sample <name>'"
            )
    return out
