"""``python -m qadom`` is the ``qadom`` command."""

import signal
import sys

# A Ctrl-C while Python loads the command kills the process by SIGINT, without a traceback, as
# it does until the command handles the signal itself (qadom.cli.main). From here, so that the
# loading of qadom.cli is covered too; Python's handler is back for main(), which takes over.
python_handles_sigint = signal.getsignal(signal.SIGINT) is signal.default_int_handler
if python_handles_sigint:
    signal.signal(signal.SIGINT, signal.SIG_DFL)

from .cli import main  # noqa: E402

if python_handles_sigint:
    signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(main())
