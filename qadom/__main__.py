"""``python -m qadom`` is the ``qadom`` command."""

import sys

from .cli import main

sys.exit(main())
