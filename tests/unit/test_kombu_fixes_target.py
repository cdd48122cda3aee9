"""workers/kombu_fixes.py patches private methods of kombu 5.7's Redis transport. If kombu
changes any of them (a new release, even a patch release), this fails loudly: re-read the
fixes against the new code before moving the pin in pyproject.toml."""

import hashlib
import inspect

import kombu
from kombu.transport import redis as redis_transport

# sha256 (first 16 hex digits) of each patched method's source as kombu 5.7.0 ships it.
PATCHED = {
    "Channel._create_client": "dae92bc4075dafb9",
    "Channel._connparams": "e9a4295085a8fb90",
    "Channel._brpop_read": "c42518699709f2df",
    "Channel._get": "be26a9f1eb4cf8da",
    "Channel._receive_one": "d59b8751d89757dc",
    "Transport._deliver": "799e242f3ec53863",
}


def _source_digest(dotted: str) -> str:
    owner, name = dotted.split(".")
    method = inspect.unwrap(getattr(getattr(redis_transport, owner), name))  # under our wrapper
    return hashlib.sha256(inspect.getsource(method).encode()).hexdigest()[:16]


def test_kombu_is_the_release_the_fixes_were_written_for():
    assert kombu.__version__.startswith("5.7."), kombu.__version__


def test_the_patched_kombu_methods_are_unchanged():
    changed = {name for name, digest in PATCHED.items() if _source_digest(name) != digest}
    assert not changed, (
        f"kombu {kombu.__version__} changed {sorted(changed)}: workers/kombu_fixes.py patches "
        "them; check each fix against the new code, then update these digests"
    )


def test_the_channel_still_decodes_through_the_module_names_fix_3_replaces():
    for name in ("Channel._brpop_read", "Channel._get"):
        owner, attr = name.split(".")
        source = inspect.getsource(inspect.unwrap(getattr(getattr(redis_transport, owner), attr)))
        assert "loads(" in source, name
    assert callable(redis_transport.loads) and callable(redis_transport.bytes_to_str)
