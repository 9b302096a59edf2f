"""The one exception type commands raise for problems a user can fix.

The CLI turns it into a one-paragraph message on stderr and an exit code (DESIGN §2): 2 for usage
and recipe errors, 1 for everything else. Keep messages of the form: what is wrong, where (file,
sample key, step, recipe key), and what to do about it.
"""


class MplError(Exception):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class UsageError(MplError):
    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


class Interrupted(MplError):
    """Raised after a resumable state was saved on Ctrl-C / SIGTERM."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=130)
