"""`python -m storytune COMMAND ...` is the `storytune` command."""

import sys

from storytune.cli import main

sys.exit(main())
