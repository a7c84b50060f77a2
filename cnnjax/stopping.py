"""Stopping a run on request: SIGTERM (a preemption) or Ctrl-C ends the training loop at a step with a checkpoint."""

import os
import signal
import sys
import threading
from typing import ClassVar

import jax
from jax.experimental import multihost_utils

from cnnjax.errors import Stopped


class StopRequests:
  """SIGTERM (a preemption) or a first Ctrl-C: the loop finishes its step, saves a checkpoint and stops.
  A second Ctrl-C stops the process at once: the last completed checkpoint stays the one to resume from
  (an unfinished save is never taken for a checkpoint).

  In a run of several processes they must stop at the same step, since saving is collective: there the
  signal goes to JAX's preemption service, which agrees a step with every process, and Ctrl-C is passed on
  to it as a SIGTERM."""

  NAMES: ClassVar[dict] = {signal.SIGTERM: ("SIGTERM", 143), signal.SIGINT: ("Ctrl-C", 130)}

  def __init__(self):
    self.received = None
    self._previous = {}
    if threading.current_thread() is not threading.main_thread():
      return  # signals reach the main thread only: a loop run elsewhere keeps the default handling
    signals = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else (signal.SIGINT,)
    for signum in signals:
      self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):
    del frame
    if self.received is not None and signum == signal.SIGINT:
      sys.stdout.flush()
      _say(
        "error: stopped at once by a second Ctrl-C; the last completed checkpoint is kept: rerun the same "
        "command to resume from it."
      )
      os._exit(130)
    self.received = self.received or signum
    if signum == signal.SIGINT:
      _say("Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again stops at once).")
      if jax.process_count() > 1:
        os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption service agrees the step with the other processes

  def stop_at(self, step: int) -> bool:
    """Whether to save and stop after `step` (the same answer on every process)."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received is not None

  def stopped(self, step: int, directory) -> Stopped:
    name, code = self.NAMES[self.received or signal.SIGTERM]
    message = f"stopped by {name} at step {step}; checkpoint saved in {directory}. Rerun the same command to resume."
    return Stopped(message, code)

  def restore(self):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def _say(text: str):
  """A line on stderr from a signal handler: os.write, since the interrupted code may be inside a print."""
  os.write(2, (text + "\n").encode())
