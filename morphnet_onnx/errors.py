"""The one exception type users see. The CLI prints its message on one line and exits 2."""


class MorphNetError(Exception):
    """A problem with the user's input that they can act on (bad file, bad option, unmet budget)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during training: a KeyboardInterrupt that says where the last checkpoint is
    and how to continue; the CLI prints it on one line and exits 130."""
