"""What a user can cause, as exception types: a leaf module, so a command can name them without importing the
code that raises them. `cli.one_line_errors` turns each into one line and a non-zero exit."""


class WorkdirError(RuntimeError):
  """A workdir that cannot be used or written as asked: the message says why and what to do."""


class WorkdirBusy(WorkdirError):
  """Another live run owns the workdir."""


class CheckpointError(RuntimeError):
  """A workdir whose checkpoints cannot be used: the message says why."""


class DatasetError(ValueError):
  """A dataset that cannot be read as asked: the message says why and what to do."""


class TrainingDiverged(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


class Stopped(RuntimeError):
  """The run stopped on request (SIGTERM, Ctrl-C) after saving a checkpoint; `exit_code` is the signal's."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code
