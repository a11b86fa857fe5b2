"""``embstream`` with one planted fault, for the poison tests: the process dies at once
(``os._exit``, as a native crash or the kernel's OOM killer would end it) when it is about to
write the state of the user named by ``EMBSTREAM_TEST_CRASH_ON``."""

from __future__ import annotations

import os
import sys

from store.writer import StoreWriter
from stream.cli import main

CRASH_ON = os.environ["EMBSTREAM_TEST_CRASH_ON"]
_put_state = StoreWriter.put_state


def _dying_put_state(self: StoreWriter, kind: str, entity_id: str, state: bytes) -> None:
    if kind == "user" and entity_id == CRASH_ON:
        os._exit(70)
    _put_state(self, kind, entity_id, state)


StoreWriter.put_state = _dying_put_state  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
