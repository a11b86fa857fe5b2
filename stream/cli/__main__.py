"""``python -m stream.cli``: the ``embstream`` command."""

from __future__ import annotations

import sys

from stream.cli.main import main

sys.exit(main())
