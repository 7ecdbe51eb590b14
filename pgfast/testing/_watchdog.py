"""Stop a LocalCluster whose owning process died without stopping it.

``LocalCluster.start()`` runs this module as a child process in its own
session, writes the cluster's state on the child's stdin and keeps the pipe
open. On a normal ``stop()`` (or ``detach()``) the owner writes ``done`` and the
watchdog exits. If the owner dies first (SIGTERM, SIGKILL, ``os._exit``: cases
where finalizers and ``atexit`` never run), the pipe closes without ``done``,
and the watchdog stops every server of the cluster and removes its temp dirs.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path

from ._local import _Node, _Runtime


def main() -> None:
    # The owner's terminal or process group may be signalled as it dies: outlive it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    state = json.loads(sys.stdin.readline())
    if sys.stdin.readline().strip() == "done":
        return
    root = Path(state["root"])
    nodes = (
        sorted(
            (
                _Node(path.name, path)
                for path in root.iterdir()
                if (path / "postmaster.pid").exists()
            ),
            key=lambda node: node.name != "primary",  # replicas stop first (reversed below)
        )
        if root.is_dir()
        else []
    )
    _Runtime(root, Path(state["bindir"]), state["uid"], state["gid"], nodes).stop()
    for extra in state["also_remove"]:
        shutil.rmtree(extra, ignore_errors=True)


if __name__ == "__main__":
    main()
