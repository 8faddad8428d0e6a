"""The errors a user's mistake raises, as opposed to a bug: the CLI prints these as one line, without a traceback.

Each is also the standard exception it refines (ValueError, FileNotFoundError), so library callers can catch either.
"""


class UserError(Exception):
  """A mistake in what the user asked for. The message says what is wrong, where, and what is allowed."""


class ConfigError(UserError, ValueError):
  """A config field holds a value that the run cannot use. The message names the field and the allowed values."""


class InputError(UserError, ValueError):
  """An argument of a call (a prompt, a size, a clip) that cannot be used. The message names it and what is allowed."""


class RunNotFoundError(UserError, FileNotFoundError):
  """A workdir that does not hold the run asked for (no config, no checkpoint, an unfinished or different run)."""
