"""The README's faust app ("Inside a faust app"), as written there, run as a faust worker
process against the session broker (like :class:`tests.conftest.WorkerProcess`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from stream.kafka.broker import free_port
from tests.conftest import WorkerProcess, http_json, wait_until

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

    def start(self, wait: bool = True) -> FaustWorker:
        root = self.data_dir.parent
        source = (
            readme_app()
            .replace('"recs"', repr(self.app_id))
            .replace("kafka://localhost:9092", f"kafka://{self.broker}")
            .replace('topic="interactions"', f"topic={self.topic!r}")
            .replace('data_dir="embstream-data"', f"data_dir={str(self.data_dir)!r}")
            .replace('registry="embstream-registry"', f"registry={str(self.registry)!r}")
        )
        assert source.count(self.topic) == 1 and source.count(str(self.data_dir)) == 1
        (root / f"{self.app_id}_app.py").write_text(source)
        self.api_port = free_port()
        self.log_path = root / f"{self.app_id}-faust-{self.api_port}.log"
        command = [
            sys.executable,
            "-m",
            "faust",
            "-A",
            f"{self.app_id}_app",
            "worker",
            "-l",
            "info",
            "--web-port",
            str(self.api_port),
            "--web-bind",
            "127.0.0.1",
            "--web-host",
            "127.0.0.1",
        ]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
            "EMBSTREAM_UPDATES_TOPIC": f"{self.topic}.updates",
            "EMBSTREAM_CONTROL_TOPIC": f"{self.topic}.control",
            **self.env,
        }
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
        if wait:
            wait_until(self._ready, timeout_s=90)
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"faust worker exited early:\n{self.log()}")
        try:
            return http_json("GET", f"{self.api}/readyz")[0] == 200
        except OSError:
            return False
