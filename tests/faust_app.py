"""The README's faust app ("Inside a faust app"), as written there, run as a faust worker
process against the session broker (like :class:`tests.conftest.WorkerProcess`)."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tests.conftest import WorkerProcess, http_json

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_app() -> str:
    """The faust app of the README's "Inside a faust app", as written there."""
    text = README.read_text()
    section = text[text.index("## Inside a faust app") :]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)[0]


@dataclass
class FaustWorker(WorkerProcess):
    """The README's app under ``faust -A ... worker``, on the session broker."""

    app_id: str = "recs"
    START_TIMEOUT_S: ClassVar[float] = 90.0  # a first start may train version 1

    def _command(self) -> list[str]:
        """``faust -A <app> worker`` of the README's app, written beside the data directory."""
        source = (
            readme_app()
            .replace('"recs"', repr(self.app_id))
            .replace("kafka://localhost:9092", f"kafka://{self.broker}")
            .replace('topic="interactions"', f"topic={self.topic!r}")
            .replace('data_dir="embstream-data"', f"data_dir={str(self.data_dir)!r}")
            .replace('registry="embstream-registry"', f"registry={str(self.registry)!r}")
        )
        assert source.count(self.topic) == 1 and source.count(str(self.data_dir)) == 1
        (self._cwd() / f"{self.app_id}_app.py").write_text(source)
        web = ["--web-port", str(self.api_port), "--web-bind", "127.0.0.1", "--web-host", "127.0.0.1"]
        return [sys.executable, "-m", "faust", "-A", f"{self.app_id}_app", "worker", "-l", "info", *web]

    def _extra_env(self) -> dict[str, str]:
        return {"PYTHONPATH": os.pathsep.join([str(self._cwd()), os.environ.get("PYTHONPATH", "")])}

    def _cwd(self) -> Path:
        return self.data_dir.parent

    def _ready(self) -> bool:
        """Ready once ``/readyz`` says so (faust's web starts after the encoder loaded)."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"faust worker exited early:\n{self.log()}")
        try:
            return http_json("GET", f"{self.api}/readyz")[0] == 200
        except OSError:
            return False
