"""Which handler serves a model directory, decided once in gunicorn's master before the workers fork:

1. the user's inference script (script.py) when SAGEMAKER_PROGRAM or SAGEMAKER_SUBMIT_DIRECTORY is set or
   the model directory holds `code/` (the SDK repacks `entry_point` and `source_dir` into model.tar.gz
   there). Its code is fetched and its requirements.txt installed here, once for all workers; each worker
   then imports the script and calls its model_fn.
2. else, for a model in MXNet's layout without our metadata.json: AWS's default MXNet handlers
   (mxnet_defaults.py), as AWS's MXNet containers serve any such model.
3. else the built-in digit model, unchanged.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .. import modeldir, usercode
from . import device, mxnet_defaults, script
from .privatecode import PrivateCode

PROGRAM = "SAGEMAKER_PROGRAM"
SUBMIT_DIRECTORY = "SAGEMAKER_SUBMIT_DIRECTORY"
CODE_FOLDER = "code"  # in the model directory

log = logging.getLogger("mxnet_byoc.selection")

Load = Callable[[Path], Any]  # handler.Load: a model directory -> a Handler


def prepare_code(model_dir: Path, env: Mapping[str, str]) -> script.UserCode | None:
    """The user's code ready to import (fetched, requirements installed), or None in no script mode.
    Raises UserCodeError with the reason when the code cannot be had."""
    program = (env.get(PROGRAM) or "").strip()
    submit = (env.get(SUBMIT_DIRECTORY) or "").strip()
    in_model = Path(model_dir) / CODE_FOLDER
    if not (program or submit or in_model.is_dir()):
        return None
    code_dir = _code_dir(submit, in_model)
    if code_dir.is_dir():
        usercode.install_requirements(code_dir)
        # As the toolkit does: subprocesses of the user's code import from its folder too.
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code_dir), os.environ.get("PYTHONPATH")]))
    code = script.UserCode(code_dir, program or script.DEFAULT_MODULE, named=bool(program))
    log.info("script mode: %s from %s", code.path.relative_to(code_dir) if code_dir in code.path.parents
             else code.path.name, code_dir)
    return code


def code_in_model(model_dir: Path, env: Mapping[str, str]) -> script.UserCode | None:
    """A model's own code (its `code/` folder) with the script SAGEMAKER_PROGRAM names, or None: in a server of
    many models each model brings its code, and SAGEMAKER_PROGRAM names the script in each."""
    folder = Path(model_dir) / CODE_FOLDER
    if not folder.is_dir():
        return None
    program = (env.get(PROGRAM) or "").strip()
    return script.UserCode(folder, program or script.DEFAULT_MODULE, named=bool(program))


def build(directory: Path, code: script.UserCode | None, builtin: Load, default_accept: str,
          private: PrivateCode | None = None, model_name: str = script.SINGLE_MODEL_NAME) -> Any:
    """The handler of one model directory on this worker's device: the user's script when there is code, AWS's
    default handlers for MXNet's layout without our metadata.json, else the built-in model."""
    where = device.current()
    if code is not None:
        return script.load_script(code, directory, where, default_accept, private, model_name)
    if mxnet_defaults.in_mxnet_layout(directory) and not (Path(directory) / modeldir.METADATA_FILE).exists():
        return mxnet_defaults.load_default(directory, where, default_accept)
    return builtin(directory)


def _code_dir(submit: str, in_model: Path) -> Path:
    if not submit:
        return in_model
    parsed = urlparse(submit)
    if parsed.scheme in ("", "file") and not Path(parsed.path).exists() and in_model.is_dir():
        # SDK local mode sends the host's path of source_dir, which the container has only in the model.
        log.warning("%s=%s is not in the container; using %s", SUBMIT_DIRECTORY, submit, in_model)
        return in_model
    return usercode.fetch(submit, Path(tempfile.mkdtemp(prefix="mxnet-byoc-code-")))


def loader(builtin: Load, default_accept: str, model_dir: Path | None = None,
           env: Mapping[str, str] | None = None) -> Load:
    """The Load for the workers: prepares the user's code now (in the master), picks the handler per load.
    A failure to get the code becomes every load's reason, so /ping says it."""
    env = os.environ if env is None else env
    failure: str | None = None
    code: script.UserCode | None = None
    try:
        code = prepare_code(Path(model_dir) if model_dir else modeldir.default_dir(), env)
    except usercode.UserCodeError as e:
        failure = str(e)
        log.error("script mode cannot start: %s", failure)

    def load(directory: Path) -> Any:
        if failure:
            raise usercode.UserCodeError(failure)
        return build(directory, code, builtin, default_accept)

    return load
