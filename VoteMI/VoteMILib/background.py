"""Work that selection may need later, started early on a spare core when there is one.

Selection's stages are mostly single-threaded, and on two cores the second one idles. Work a later
stage might need (the representative vote's neighbour query, the head's small-lesion map) is started
in a thread as soon as its inputs exist; numpy, scipy.ndimage and the KD-tree release the GIL while
they compute. The result is the same whether it ran in the background or on first use.
"""

from __future__ import annotations

from concurrent.futures import TimeoutError


class Deferred:
    """A computation done at most once, when its result is first asked for."""

    def __init__(self, function, args):
        self._function, self._args, self._done, self._value = function, args, False, None

    def result(self):
        if not self._done:
            self._value, self._done = self._function(*self._args), True
            self._function = self._args = None
        return self._value


def start(pool, function, *args):
    """``function(*args)`` submitted to ``pool`` (a :class:`concurrent.futures.Executor`), or, with no
    pool, deferred until first asked for; either way an object whose ``result()`` returns its value."""
    if pool is None:
        return Deferred(function, args)
    return pool.submit(function, *args)


def wait_for(work, poll, interval_s: float = 0.1):
    """The result of :func:`start`'s ``work``, calling ``poll()`` every ``interval_s`` while it runs in the
    background, so that a caller waiting on it can still be cancelled (``poll`` raises to stop waiting)."""
    if isinstance(work, Deferred):
        return work.result()
    while True:
        try:
            return work.result(timeout=interval_s)
        except TimeoutError:
            poll()
