"""The facade's caches (suspension state, merchant keys) expire on the clock the facade is given, never on
the process's own: with a fake clock, nothing expires until it is advanced."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from idtronic_tel.core import suspension
from idtronic_tel.core.facade import Core
from tests.conftest import make_rules


class CountingPool:
    """A DB pool that answers at once and counts the reads."""

    def __init__(self) -> None:
        self.reads = 0

    def run(self, fn: Any, *args: Any) -> Deferred[Any]:
        self.reads += 1
        return succeed((False, "") if fn is suspension.global_state else None)


def test_the_caches_expire_on_the_injected_clock() -> None:
    clock, pool = Clock(), CountingPool()
    core = Core(clock, pool, make_rules())  # type: ignore[arg-type]

    def read_both() -> None:
        core.suspension_state()
        core.authenticate_merchant("mk_unknown")

    read_both()
    assert pool.reads == 2
    read_both()
    clock.advance(1.9)
    read_both()
    assert pool.reads == 2  # cached: the injected clock says 1.9 s
    clock.advance(0.2)
    read_both()
    assert pool.reads == 4  # expired after 2 s of the injected clock
