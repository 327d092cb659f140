"""The one exception type a user sees: a mistake they can fix, said in one line; and the command that the
fixes it suggests start with."""
import os
import shlex
import sys


class UserError(Exception):
    """Bad input, bad configuration or a refused action.

    The CLI prints ``error: <message>`` and exits with status 2, without a traceback
    (``--debug`` shows it). The message names the file or key at fault and the fix.
    """


def cli_command() -> str:
    """How the user started the toolkit, for the commands that messages suggest (``cxrgan evaluate ...``):
    ``python cli.py`` (the script's path as typed) when this process runs ``cli.py`` as a script, else
    ``cxrgan``, the command an installation puts on the PATH (also for Python users of the packages)."""
    script = sys.argv[0] if sys.argv else ""
    return f"python {shlex.quote(script)}" if os.path.basename(script) == "cli.py" else "cxrgan"
