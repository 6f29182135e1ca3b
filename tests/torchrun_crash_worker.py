"""Started by tests/test_torchrun.py under ``torchrun``: ``lamda run …`` in which one rank dies once, right after
the completion marker of its first cell is written, so that torchrun's elastic agent restarts the job.

    python -m torch.distributed.run … tests/torchrun_crash_worker.py FLAG RANK run probe --preset smoke …

``FLAG`` is a file the dying rank creates (it dies only while the file is absent: once); ``RANK`` the rank that
dies. The crash is injected by wrapping :func:`lamda.result_files.write_json`, which writes the markers.
"""
from __future__ import annotations

import os
import pathlib
import sys

from lamda import result_files
from lamda.cli import main


def crash_after_first_marker(flag: pathlib.Path, rank: int) -> None:
    """Make rank ``rank`` exit (status 3) after writing its first ``.cells/…done.json``, unless ``flag`` exists."""
    write_json = result_files.write_json

    def write(path, obj) -> None:
        write_json(path, obj)
        p = pathlib.Path(path)
        if (p.name.endswith(".done.json") and ".cells" in p.parts and int(os.environ.get("RANK", "0")) == rank
                and not flag.exists()):
            flag.write_text(str(os.getpid()))
            print(f"[crash worker] rank {rank} exits after its first cell", flush=True)
            os._exit(3)

    result_files.write_json = write


if __name__ == "__main__":
    crash_after_first_marker(pathlib.Path(sys.argv[1]), int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
