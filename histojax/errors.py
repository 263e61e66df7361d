"""Expected errors: bad input, a bad config, a refused workdir. launch.py prints each as one
short message (the traceback only with --debug); anything else is a bug and keeps its trace."""


class UserError(Exception):
  """An error the user can fix; the message names the file or config key and what to do."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work (names the key)."""


class WorkdirError(UserError):
  """The workdir cannot be used as asked: locked, changed config, unwritable, no checkpoint."""


class CheckpointError(WorkdirError):
  """A checkpoint could not be written or read (names the checkpoint and the cause)."""


class TrainingDiverged(UserError, FloatingPointError):
  """A non-finite training loss; the last good checkpoint is kept."""


class StopRequested(Exception):
  """SIGTERM/SIGINT during an evaluation in --mode=train: raised by the `progress` callable
  that the train loop hands to `task.evaluate`, between examples, so that the loop saves what
  is new and exits cleanly. The loop catches it; it is no error of the user's."""

  def __init__(self, signal_name):
    super().__init__(f'{signal_name}: stop requested')
    self.signal_name = signal_name
