"""Stopping a training run cleanly on Ctrl-C (SIGINT), SIGTERM or SIGHUP (a terminal closed).

While ``StopSignals.watching``, the first of these signals only records itself: the training
loop finishes its step, writes last.pt and raises ``KeyboardInterrupt`` (SIGINT) or
``Terminated`` (SIGTERM, SIGHUP) at a step boundary, so a checkpoint is never taken of a
half-made optimizer step. In one process the SIGINT and SIGTERM handlers are gone after the
first signal, so a second one is Python's or the system's own: it stops at once, the last.pt
written before kept whole. SIGHUP's stays, only recording: a closing terminal may send it
twice (the shell passing it on, then the kernel), and no one is left to send it on purpose.

Under torchrun the processes get the signal from torchrun (a Ctrl-C, SIGTERM or SIGHUP sent
to it is passed on to every process, which it kills after its shutdown timeout, 30 s),
each at its own step; the loop then stops them all at one step: the next log line's,
validation's or checkpoint's. There every handler stays until the run stops, only
recording: a process can get the signal twice (from a scheduler that signals every
process, and again from torchrun), and torchrun's kill is the stop at once. SIGQUIT, which
torchrun passes on too, stops at once as before.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# each signal's handler before spnas's, which spnas takes over only when it is this one
_DEFAULT: dict[int, Callable | int] = {signal.SIGINT: signal.default_int_handler,
                                       signal.SIGTERM: signal.SIG_DFL}
NAMES: dict[int, str] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
_SIGHUP = getattr(signal, "SIGHUP", None)  # POSIX: the terminal closed (an ssh session dropped)
if _SIGHUP is not None:
    _DEFAULT[_SIGHUP] = signal.SIG_DFL
    NAMES[_SIGHUP] = "SIGHUP"
SINGLE = ("finishing the step under way (and a validation, if one is running), then writing "
          "last.pt")


class Terminated(KeyboardInterrupt):
    """A run stopped by SIGTERM or SIGHUP (``signum``; exit status 128 + signum: 143, 129), as
    ``KeyboardInterrupt`` stops one on Ctrl-C (130): whatever cleans up after an interrupted
    run does after a terminated one too."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.signum = int(signum)
        self.name = NAMES.get(self.signum) or signal.Signals(self.signum).name
        super().__init__(self.name)

    def __reduce__(self):  # rebuilt from the number (the message is the name)
        return type(self), (self.signum,), self.__dict__


def stop_exception(signum: int, together: bool = False) -> KeyboardInterrupt:
    """The stop of a run on ``signum``; ``together``: every process raises it at the same step
    (after agreeing on it), so each may wait for the others before it tears down."""
    e = KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)
    e.together = together  # type: ignore[attr-defined]
    return e


def shutdown_timeout(env=os.environ) -> float:
    """The seconds torchrun waits, after passing a signal on, before it kills the processes,
    as far as they can tell: its --shutdown_timeout flag given as PET_SHUTDOWN_TIMEOUT, else
    TORCH_ELASTIC_SHUTDOWN_TIMEOUT, else torch's 30 (the flag itself is not passed on)."""
    for name in ("PET_SHUTDOWN_TIMEOUT", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"):
        if name in env:
            try:
                return float(env[name])
            except ValueError:
                break  # torchrun refuses it and never starts the processes: not reached
    return 30.0


def slow_stop_note(seconds_per_step: float, steps: int, val_seconds: float,
                   limit: float) -> str | None:
    """The note for a torchrun run whose processes, stopping at the next log line, validation
    or checkpoint, might not get there before torchrun kills them: over half of ``limit`` s
    for the most ``steps`` between two of those and a validation (``val_seconds``, 0: none
    yet)."""
    took = seconds_per_step * steps + val_seconds
    if took <= limit / 2:
        return None
    what = f"{steps} steps" + (" and a validation" if val_seconds else "")
    return ("note: under torchrun a Ctrl-C or SIGTERM (or SIGHUP) stops the processes at the "
            f"next log line, validation or checkpoint, up to {what} away, which take about "
            f"{took:.0f} s here, over half of the {limit:g} s torchrun waits before it kills "
            "them (its --shutdown_timeout; set TORCH_ELASTIC_SHUTDOWN_TIMEOUT to tell spnas a "
            "longer one); with a lower --print_freq (or a smaller --val_size) they stop in time "
            "and write last.pt")


class StopSignals:
    """``signum``: the first of the signals received while watching (0: none yet)."""

    def __init__(self, notice: str | None = SINGLE, again: bool = True) -> None:
        """``notice``: what the run does now, told on stderr (None: nothing told, as on every
        torchrun process but the first); ``again``: a second signal stops at once (so the
        handlers go after the first), else later ones are only recorded (under torchrun)."""
        self.signum = 0
        self._notice = notice
        self._again = again
        self._mine: list[int] = []

    def _handle(self, signum, frame) -> None:
        first = not self.signum
        self.signum = self.signum or signum
        if self._again:  # SIGHUP's stays: a closing terminal may send it twice (shell, kernel)
            for s in self._mine:
                if s != _SIGHUP:
                    signal.signal(s, _DEFAULT[s])
        if self._notice is None or not first:
            return
        again = ("" if not self._again or signum == _SIGHUP else
                 f"; {'press it' if signum == signal.SIGINT else 'send it'} again to stop at once")
        text = f"\n{NAMES[signum]}: {self._notice}{again}\n"
        # os.write, not print: a handler that runs while stderr is mid-write must not write to
        # its buffer again; and a closed stderr (`| tee` killed by the same Ctrl-C) must not
        # turn into an error at whatever line the loop was running
        try:
            os.write(2, text.encode())
        except OSError:
            pass

    @contextmanager
    def watching(self) -> Iterator["StopSignals"]:
        """Handle each signal whose handler is the default one; another handler is someone
        else's (a caller's, a debugger's, nohup's SIG_IGN) and is kept, as in any thread but
        the main one, where no handler can be set."""
        main = threading.current_thread() is threading.main_thread()
        self._mine = [s for s, handler in _DEFAULT.items()
                      if main and signal.getsignal(s) is handler]
        for s in self._mine:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s in self._mine:
                signal.signal(s, _DEFAULT[s])
