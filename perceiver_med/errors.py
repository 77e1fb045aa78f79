"""The one exception type for mistakes the user can fix; the CLI turns it into one line and exit 2."""


class UserError(Exception):
    """Bad input: a missing folder, an unreadable CSV, impossible options."""


class ScanError(Exception):
    """One scan cannot be read or preprocessed; callers skip it and report the reason."""


class Interrupted(Exception):
    """The user pressed Ctrl-C; the message says what was kept and how to continue."""
