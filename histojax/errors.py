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
