"""Property-based fuzzing of every frame path with mutations of the real payloads (issue 12, "Trust at the edges").

Hypothesis draws good frames of one channel interleaved with mutations of one family (tests/fuzzing.py) and
the sizes of the socket reads they arrive in, then checks:

* **Through the intake** (:class:`~hftdb.exchanges.intake.Intake`, as the live consumer and the file replay run
  it): no exception escapes; each frame, run *alone* through a fresh intake (after one good frame that opens the
  book), gives what its family says (a good frame its own row and nothing else, a bad frame exactly one reject
  and no row); and the interleaved run gives exactly the sum of the frames alone: the same rows, each once, the
  same rejects by reason, the same duplicates. So no frame costs another frame.
* **Through ingest-file** (:func:`~hftdb.ops.replay.replay_frames` into a real database): within a bounded time,
  every good frame's row is stored exactly once (counted in the database by the frame's own update id or
  exchange time), no bad frame's row is stored, and the rejects the result reports are the bad frames.

* **REST responses and private events**, mutated at any path: the poller's parse (``parse_rest``) gives records
  or a reject that names the fault; the intake takes a private event or counts it once.

The default run is seeded (``derandomize``), small and unshrunk (about 190 cases, under a minute);
``HFTDB_FUZZ_PROFILE=long`` draws 300 unseeded examples a case and shrinks failures, and
benchmarks/fuzz_long.py runs thousands of frames per channel. Cases that fail for a fix not yet merged are
``xfail(strict=True)`` with the fix named: remove the mark when it lands.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from hftdb import DatabaseManager
from hftdb.config import VENUE_CHANNELS, load_settings
from hftdb.errors import FrameError
from hftdb.exchanges.base import parse_rest
from hftdb.exchanges.intake import Intake
from hftdb.exchanges.registry import create_adapter, create_parser
from hftdb.exchanges.runner import StreamRunner
from hftdb.models import now_us
from hftdb.ops.replay import replay_frames

from fuzzing import (CHANNELS, DOCUMENTS, FAMILIES, FIXTURES, MISSING, check_intake, check_stored, mutated_documents,
                     plans, stored)

if MISSING is not None:
    pytest.skip(MISSING, allow_module_level=True)  # every case here mutates a recorded payload

# The default run: seeded, a few examples, no shrinking (a failure is reported as drawn; the long profile
# shrinks it). HFTDB_FUZZ_PROFILE=long draws many more, unseeded.
settings.register_profile(
    "default", derandomize=True, deadline=None, max_examples=6, database=None, print_blob=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("long", parent=settings.get_profile("default"), derandomize=False, max_examples=300,
                          phases=[Phase.explicit, Phase.generate, Phase.shrink])
PROFILE = settings.get_profile(os.environ.get("HFTDB_FUZZ_PROFILE", "default"))

#: every frame's serial is new: rows of one example never meet another's in the shared database
_serials = itertools.count(2, 2).__next__

#: a replay of a few dozen frames commits in milliseconds; this bound only turns a hang into a failure
REPLAY_TIMEOUT = 15.0

HOSTILE = tuple(f for f in FAMILIES if f != "valid")


# -- known failures: each names the fix it waits for (remove the mark when the fix lands) -------------------------
# None today. A case is marked ``xfail(strict=True)`` with the missing fix named, so it turns red when fixed.

_XFAIL_INTAKE: dict[tuple[str, str], str] = {}
_XFAIL_INGEST: dict[tuple[str, str], str] = {}


def _cases(xfails: dict[tuple[str, str], str], groups: tuple[str, ...]) -> list:
    out = []
    for cid in CHANNELS:
        for group in groups:
            reason = xfails.get((cid, group)) or xfails.get(("*", group))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(cid, group, id=f"{cid}-{group}", marks=marks))
    return out


@pytest.fixture(scope="module")
def sink(pg_admin_dsn):
    """The intake's sink: a real DatabaseManager's feed sink (the intake packs rows for it, as live), never opened:
    the intake only asks it for symbol ids it already knows, which takes no I/O."""
    return DatabaseManager(pg_admin_dsn, settings=_settings()).feed_sink()


@pytest.fixture
async def db(dsn):
    """An opened DatabaseManager on the test's own database."""
    async with DatabaseManager(dsn, settings=_settings()) as manager:
        yield manager


def _settings():
    base = load_settings(environ={})
    return msgspec.structs.replace(base, writer=msgspec.structs.replace(base.writer, spool_dir=None))


@pytest.mark.parametrize(("channel", "family"), _cases(_XFAIL_INTAKE, HOSTILE))
@PROFILE
@given(data=st.data())
def test_hostile_frames_through_the_intake(sink, channel, family, data):
    ch = CHANNELS[channel]
    check_intake(ch, sink, data.draw(plans(ch, (family,), _serials), label="plan"))


# -- through ingest-file -----------------------------------------------------------------------------------------

#: families whose frames the parser refuses, and those whose rows only the database's rules refuse
FRAME_FAMILIES = ("truncate", "wrong_type", "missing_key", "null_key", "deep_nesting", "raw_nul", "raw_surrogate",
                  "invalid_utf8", "array_for_object", "unknown_envelope", "exponent")
ROW_FAMILIES = ("nul_escape", "surrogate_escape", "negative_number")
GROUPS = {"frames": FRAME_FAMILIES, "rows": ROW_FAMILIES, "huge": ("huge_number",)}


# Never shrunk, even in the long profile: a hang costs a timeout per try (the intake cases shrink the same
# families).
_INGEST = settings(PROFILE, max_examples=3 if PROFILE.derandomize else max(PROFILE.max_examples // 10, 3),
                   phases=[Phase.explicit, Phase.generate])


@pytest.mark.parametrize(("channel", "group"), _cases(_XFAIL_INGEST, tuple(GROUPS)))
@_INGEST
@given(data=st.data())
async def test_hostile_frames_through_ingest_file(dsn, db, channel, group, data):
    # One database and manager for the test's examples: every frame's key is new, so examples never meet.
    ch = CHANNELS[channel]
    plan = data.draw(plans(ch, GROUPS[group], _serials, max_frames=40), label="plan")
    frames = [s.raw for s in plan.steps]
    try:
        result = await asyncio.wait_for(
            replay_frames(db, frames, exchange=ch.venue, channels=[ch.channel], chunk=max(plan.reads)),
            REPLAY_TIMEOUT)
    except TimeoutError:
        pytest.fail(f"ingest of {len(frames)} frames did not finish in {REPLAY_TIMEOUT}s")
    assert result.frames == len(frames)
    counts = await stored(dsn, ch, [s.serial for s in plan.steps])
    assert check_stored(ch, plan.steps, counts, result.rejects) == []


# -- REST responses and private events, mutated anywhere ---------------------------------------------------------

_DOC_IDS = [f"{venue}-{how}-{name.split('.')[0]}" for venue, how, name in DOCUMENTS]


@pytest.mark.parametrize(("venue", "how", "name"), DOCUMENTS, ids=_DOC_IDS)
@PROFILE
@given(data=st.data())
def test_mutated_documents_are_records_or_named_rejects(sink, venue, how, name, data):
    # A REST poller's parse (through parse_rest, as the poller calls it) returns records or raises FrameError
    # with a reason that names what is wrong: parser_error is the last resort's name for an exception the
    # parser did not expect, i.e. a parser bug. A private event through the intake is taken or counted once.
    doc = json.loads((FIXTURES / name).read_text())
    raw = data.draw(mutated_documents(doc), label="document")
    parser = create_parser(venue)
    if how == "intake":
        adapter = create_adapter(venue, sink, channels=list(VENUE_CHANNELS[venue][:1]))
        intake = Intake(StreamRunner(adapter), adapter.new_parser())
        intake.process([(now_us(), [raw])])
        assert adapter.rejects.total <= 1
        return
    args = (1, now_us()) if how == "parse_symbols" else (now_us(),)
    try:
        records = parse_rest(getattr(parser, how), raw, *args)
    except FrameError as exc:
        assert exc.reason != "parser_error", f"the parser raised {exc.__cause__!r}"
        return
    assert isinstance(records, list)
