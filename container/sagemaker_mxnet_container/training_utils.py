"""`save` and `scheduler_host`, as scripts for AWS's MXNet containers call them.

`save(model_dir, module)` writes a Module API model where AWS's MXNet inference container (and this
image's `serve`) loads it by default: model-symbol.json, model-0000.params and model-shapes.json, on the
scheduler host only (the first host), so that several hosts never write the same files.
"""

from __future__ import annotations

import json
import os
from typing import Any

SYMBOL_PATH = "model-symbol.json"
PARAMS_PATH = "model-0000.params"
SHAPES_PATH = "model-shapes.json"


def scheduler_host(hosts: list[str]) -> str:
    """The host that runs the parameter server's scheduler and saves the model: the first one."""
    return hosts[0]


def save(model_dir: str, model: Any, current_host: str | None = None, hosts: list[str] | None = None) -> None:
    """Save an `mxnet.mod.Module`'s symbol, parameters and input shapes into `model_dir`, on the scheduler
    host only. `current_host` and `hosts` default to SM_CURRENT_HOST and SM_HOSTS."""
    current_host = current_host or os.environ["SM_CURRENT_HOST"]
    hosts = hosts or json.loads(os.environ["SM_HOSTS"])
    if current_host != scheduler_host(hosts):
        return
    model.symbol.save(os.path.join(model_dir, SYMBOL_PATH))
    model.save_params(os.path.join(model_dir, PARAMS_PATH))
    shapes = [{"name": desc.name, "shape": list(desc.shape)} for desc in model.data_shapes]
    with open(os.path.join(model_dir, SHAPES_PATH), "w") as f:
        json.dump(shapes, f)
