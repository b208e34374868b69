"""The error type for input a user can fix."""


class UserError(Exception):
  """Bad input the user can fix: a missing dataset, a config that does not fit, a bad override.

  The command line prints the message as one line and exits with status 2, without a traceback, so
  the message must say what was wrong and what to do about it.
  """


class Preempted(Exception):
  """The run was asked to stop (SIGTERM, a pod preemption) and saved a checkpoint first.

  The command line reports it and exits with status 0: the same command resumes the run.
  """
