"""The one exception type commands raise for problems a user can fix.

The CLI turns it into a one-paragraph message on stderr and an exit code (DESIGN §2; README
"Exit codes"). The rule, the same for every command, decided by the kind of fault, not by the
command that meets it:

- 2 (`UsageError`): the command line or the recipe is wrong — an unknown option or recipe key, a
  value out of range, a recipe file that is missing or not TOML, settings that contradict each
  other, a run folder that holds another recipe's run, a run that cannot fit this machine.
- 1 (`MplError`, the default): a file's content is bad, or the work failed — a shard set or
  checkpoint that is missing, unreadable, corrupt, non-finite or does not fit the data (another
  label set, input shape), an existing output without --force, a full disk, a training run that
  diverged. A path given on the command line that does not exist is such a file: exit 1.
- 130 (`Interrupted`, or Ctrl-C anywhere): interrupted; a training run saved a resumable state.

`mpl recipes validate` is a recipe check: every problem it finds is reported as a recipe error
(2), naming the recipe key as well as the file. Anything unexpected still gets a message and 1.
Keep messages of the form: what is wrong, where (file, sample key, step, recipe key), and what
to do about it.
"""


class MplError(Exception):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class UsageError(MplError):
    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


class RecipeFaults(UsageError):
    """Every independent fault found in one recipe at once (`mpl recipes validate` reports them all), one line
    each, naming the key and where its value came from (the file, `--set` or `--seed`)."""

    def __init__(self, lines: list[str]):
        self.lines = list(lines)
        many = f"{len(self.lines)} problems:\n" + "\n".join(f"  {line}" for line in self.lines)
        super().__init__(self.lines[0] if len(self.lines) == 1 else many)


class Interrupted(MplError):
    """Raised after a resumable state was saved on Ctrl-C / SIGTERM."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=130)
