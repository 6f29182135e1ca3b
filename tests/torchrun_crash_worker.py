"""Started by tests/test_torchrun.py under ``torchrun``: ``lamda run …`` in which one rank dies once, right after
its first cell is finished (marker written, "done" line logged), so that torchrun's elastic agent restarts the job.

    python -m torch.distributed.run … tests/torchrun_crash_worker.py FLAG RANK run probe --preset smoke …

``FLAG`` is a file the dying rank creates (it dies only while the file is absent: once); ``RANK`` the rank that
dies. The runner logs a cell's "done" line after writing its completion marker, so the worker watches this
process's standard output for that line.
"""
from __future__ import annotations

import os
import pathlib
import sys

from lamda.cli import main


class _ExitAfterFirstCell:
    """A stdout that exits the process (status 3) once it has passed on the first "<key> done in" line."""

    def __init__(self, stream, flag: pathlib.Path, rank: int):
        self.stream, self.flag, self.rank = stream, flag, rank

    def write(self, text: str) -> int:
        n = self.stream.write(text)
        if f"rank {self.rank}/" in text and " done in " in text and not self.flag.exists():
            self.flag.write_text(str(os.getpid()))
            self.stream.write(f"[crash worker] rank {self.rank} exits after its first cell\n")
            self.stream.flush()
            os._exit(3)
        return n

    def __getattr__(self, name):
        return getattr(self.stream, name)


if __name__ == "__main__":
    flag, rank = pathlib.Path(sys.argv[1]), int(sys.argv[2])
    if int(os.environ.get("RANK", "0")) == rank:
        sys.stdout = _ExitAfterFirstCell(sys.stdout, flag, rank)
    sys.exit(main(sys.argv[3:]))
