"""What SDK local mode leaves behind on this machine, found and removed: the containers it creates (and never
removes) and the compose folders beside them. byoctl's local commands and the tests that run local mode use it.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

# SDK local mode names its containers PROJECT-algo-N-XXXXX and never removes them; after training it
# also leaves its compose folder (a temp dir holding a copy of the model) behind. (SDK 3's ModelTrainer
# names them differently, in a folder byoctl chooses: remove_compose_containers.)
_LOCAL_SERVICE = re.compile(r"^algo-[0-9]+-[a-z0-9]+$")
_FORMAT = "\t".join(("{{.ID}}", "{{.State}}", '{{.Label "com.docker.compose.service"}}',
                     '{{.Label "com.docker.compose.project.working_dir"}}'))


def local_mode_containers() -> dict[str, tuple[str, str]]:
    """id -> (state, compose working dir) of every container that SDK local mode created."""
    result = subprocess.run(["docker", "ps", "-a", "--no-trunc", "--filter", "label=com.docker.compose.project",
                             "--format", _FORMAT], capture_output=True, text=True)
    containers = {}
    for line in result.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) == 4 and _LOCAL_SERVICE.match(fields[2]):
            containers[fields[0]] = (fields[1], fields[3])
    return containers


@contextlib.contextmanager
def local_leftovers_removed() -> Iterator[None]:
    """Removes the exited containers, and their temp folders, that local mode created meanwhile."""
    before = set(local_mode_containers())
    try:
        yield
    finally:
        new = {cid: info for cid, info in local_mode_containers().items() if cid not in before}
        finished = [cid for cid, (state, _) in new.items() if state in ("exited", "created", "dead")]
        if finished:
            subprocess.run(["docker", "rm", *finished], capture_output=True)
        tmp = Path(tempfile.gettempdir()).resolve()
        for cid in finished:
            folder = Path(new[cid][1])
            if folder.parent == tmp and (folder / "docker-compose.yaml").is_file():
                shutil.rmtree(folder, ignore_errors=True)


def remove_compose_containers(working_dir: Path) -> None:
    """Removes the containers of the compose project in `working_dir` (ModelTrainer's local jobs)."""
    result = subprocess.run(["docker", "ps", "-a", "-q", "--no-trunc", "--filter",
                             f"label=com.docker.compose.project.working_dir={working_dir}"],
                            capture_output=True, text=True)
    if result.stdout.split():
        subprocess.run(["docker", "rm", "-f", *result.stdout.split()], capture_output=True)
