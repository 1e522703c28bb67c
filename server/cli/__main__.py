"""`python -m server.cli` is `studio` (how `serve --workers` starts its workers)."""

import sys

from server.cli import main

sys.exit(main())
