"""A multi-model endpoint in a real `serve` (SAGEMAKER_MULTI_MODEL=true, nginx in front of 2 gunicorn workers),
driven as SageMaker drives it: 20 models of every kind loaded in parallel, each invoked from many connections at
once, half unloaded, reloaded, listed page by page; a model that cannot load, beside the others."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from devkit.mme_models import JSON, ZooModel, zoo
from devkit.script_models import write_script

CONNECTIONS = 16
ROUNDS = 5  # requests per model per round of invocations


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[ZooModel]:
    return zoo(tmp_path_factory.mktemp("models"), 20)


@pytest.fixture
def server(start_server, tmp_path):
    running = start_server(tmp_path / "ml", SAGEMAKER_MULTI_MODEL="true")
    running.wait_ready(120)
    return running


def load(server, name: str, folder) -> requests.Response:
    return requests.post(server.url("/models"), json={"model_name": name, "url": str(folder)}, timeout=300)


def invoke_all(server, models: list[ZooModel]) -> list[str]:
    """Every model ROUNDS times, from CONNECTIONS connections at once; the mistakes found."""
    local = threading.local()

    def call(model: ZooModel) -> str | None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        answer = session.post(server.url(f"/models/{model.name}/invoke"), data=model.body,
                              headers={"Content-Type": model.content_type, "Accept": JSON,
                                       "X-Amzn-SageMaker-Target-Model": f"{model.name}.tar.gz"}, timeout=60)
        if answer.status_code != 200 or not model.expected(answer.content):
            return f"{model.name} ({model.kind}): {answer.status_code} {answer.text[:200]}"
        return None

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        return [m for m in pool.map(call, [m for m in models for _ in range(ROUNDS)]) if m]


def listed(server, limit: int = 7) -> list[str]:
    names, token = [], None
    while True:
        page = requests.get(server.url("/models"), params={"limit": limit, **({"next_page_token": token}
                                                                               if token else {})}, timeout=30)
        assert page.status_code == 200
        names += [m["modelName"] for m in page.json()["models"]]
        token = page.json().get("nextPageToken")
        if token is None:
            return names


def test_twenty_models_loaded_invoked_unloaded_and_reloaded(server, models):
    assert requests.get(server.url("/ping"), timeout=10).status_code == 200  # before any model
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda m: load(server, m.name, m.folder), models))
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers if a.status_code != 200]
    assert listed(server) == sorted(m.name for m in models)
    assert invoke_all(server, models) == []

    unloaded, kept = models[::2], models[1::2]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda m: requests.delete(server.url(f"/models/{m.name}"), timeout=120), unloaded))
    assert [a.status_code for a in answers] == [200] * 10
    assert listed(server) == sorted(m.name for m in kept)
    for model in unloaded[:3]:
        gone = requests.post(server.url(f"/models/{model.name}/invoke"), data=model.body,
                             headers={"Content-Type": JSON}, timeout=30)
        assert gone.status_code == 404 and gone.json() == {"error": f"model {model.name!r} is not loaded"}
    assert invoke_all(server, kept) == []

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda m: load(server, m.name, m.folder), unloaded))
    assert [a.status_code for a in answers] == [200] * 10
    assert invoke_all(server, models) == []
    assert listed(server, limit=100) == sorted(m.name for m in models)


def test_the_contracts_errors(server, models, tmp_path):
    model = models[2]  # one with code
    assert load(server, model.name, model.folder).status_code == 200
    again = load(server, model.name, model.folder)
    assert again.status_code == 409 and again.json() == {"error": f"model {model.name!r} is loaded already"}
    assert requests.get(server.url("/models/nothing"), timeout=10).status_code == 404
    assert requests.delete(server.url("/models/nothing"), timeout=10).json() == {"error": "model 'nothing' is not "
                                                                                       "loaded"}
    echoed = requests.post(server.url(f"/models/{model.name}/invoke"), data=b"[[1]]",
                           headers={"Content-Type": JSON, "Accept": JSON,
                                    "X-Amzn-SageMaker-Custom-Attributes": "tenant=7"}, timeout=30)
    assert echoed.json()["attributes"] == "tenant=7"

    broken = tmp_path / "broken" / "model"
    write_script(broken / "code", "def model_fn(model_dir):\n    raise RuntimeError('no weights for you')\n")
    failed = load(server, "broken", broken)
    assert failed.status_code == 500 and failed.json() == {"error": "model broken: model_fn raised RuntimeError: no "
                                                                    "weights for you"}
    assert listed(server) == [model.name]
    assert invoke_all(server, [model]) == []  # the others go on serving


def test_a_models_requirements_may_add_packages_but_never_change_one(server, models, tmp_path):
    """pip runs once per model before any worker loads it, pinned to what is installed: a requirement that is met
    loads (pip has nothing to do, offline), one that would change numpy is refused with pip's reason."""
    met, changing = tmp_path / "met" / "model", tmp_path / "changing" / "model"
    for folder, requirement in ((met, "numpy\n"), (changing, "numpy==1.0.0\n")):
        shutil.copytree(models[2].folder, folder)
        (folder / "code" / "requirements.txt").write_text(requirement)
    assert load(server, "met", met).status_code == 200
    refused = load(server, "changing", changing)
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("model changing: pip could not install requirements.txt (exit 1): ")
    assert "Cannot install numpy==1.0.0" in refused.json()["error"]
    assert "may add packages, not change the version of one installed already" in refused.json()["error"]
    assert listed(server) == ["met"]
