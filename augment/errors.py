"""The one exception type a user sees: a mistake they can fix, said in one line."""


class UserError(Exception):
    """Bad input, bad configuration or a refused action.

    The CLI prints ``error: <message>`` and exits with status 2, without a traceback
    (``--debug`` shows it). The message names the file or key at fault and the fix.
    """
