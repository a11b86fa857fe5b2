"""embstream inside other stream processors' apps: ``faust`` (a faust-streaming app hosts
the refresher as one of its agents and serves the API on its web server).

Each module imports its host's package, an optional dependency
(``pip install 'embstream[faust]'``); this package imports none of them.
"""

from __future__ import annotations

__all__: list[str] = []
