"""byoctl.mnist against real HTTP servers on 127.0.0.1: good, corrupt, empty and dead mirrors."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from byoctl import mnist
from devkit import datasets
from devkit.net import free_port


class _Mirror:
    """A static file server rooted at `root` that records the paths it was asked for."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                mirror.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        # Files sit under /mnist/ as on the public mirrors, so the base URL's path is exercised too.
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/mnist/"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    mirrors: list[_Mirror] = []

    def start(files: dict[str, Path | bytes] | None) -> _Mirror:
        # Each mirror's files live in <tmp>/mirrorN/mnist/; None serves an empty folder (404s).
        root = tmp_path / f"mirror{len(mirrors)}"
        (root / "mnist").mkdir(parents=True)
        for name, content in (files or {}).items():
            if isinstance(content, Path):
                (root / "mnist" / name).symlink_to(content)
            else:
                (root / "mnist" / name).write_bytes(content)
        mirror = _Mirror(root)
        mirrors.append(mirror)
        return mirror

    yield start
    for mirror in mirrors:
        mirror.close()


@pytest.fixture
def good(serve, mnist_dir: Path) -> _Mirror:
    return serve({name: mnist_dir / name for name in mnist.FILES})


@pytest.fixture
def corrupt(serve) -> _Mirror:
    return serve({name: b"<html>not the file you wanted</html>" for name in mnist.FILES})


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/mnist/"


def _assert_complete(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(mnist.FILES), "stray or missing files"
    for name in mnist.FILES:
        assert mnist.sha256_of(folder / name) == mnist.SHA256[name]


def test_checksums_match_the_shared_copy(mnist_dir: Path) -> None:
    for name in mnist.FILES:
        assert mnist.is_valid(mnist_dir / name, name), name


def test_downloads_all_four_files(tmp_path: Path, good: _Mirror) -> None:
    target = tmp_path / "cache"
    logged: list[str] = []
    assert mnist.download(target, [good.url], log=logged.append) == target
    _assert_complete(target)
    assert sorted(good.requests) == sorted(f"/mnist/{name}" for name in mnist.FILES)
    assert len(logged) == 4 and all(good.url in line for line in logged)


def test_corrupt_first_mirror_falls_through_to_the_next(
    tmp_path: Path, corrupt: _Mirror, good: _Mirror
) -> None:
    target = tmp_path / "cache"
    mnist.download(target, [corrupt.url, good.url], log=lambda _: None)
    _assert_complete(target)
    assert len(corrupt.requests) == 4 and len(good.requests) == 4


def test_dead_and_missing_mirrors_fall_through(tmp_path: Path, serve, good: _Mirror) -> None:
    empty = serve(None)
    target = tmp_path / "cache"
    mnist.download(target, [_dead_url(), empty.url, good.url], log=lambda _: None)
    _assert_complete(target)


def test_every_mirror_failing_is_a_clear_error(tmp_path: Path, serve, corrupt: _Mirror) -> None:
    empty = serve(None)
    dead = _dead_url()
    target = tmp_path / "cache"
    with pytest.raises(mnist.MnistError) as err:
        mnist.download(target, [corrupt.url, empty.url, dead], timeout=5, log=lambda _: None)
    message = str(err.value)
    assert "could not download train-images-idx3-ubyte.gz from any mirror" in message
    assert f"{corrupt.url}train-images-idx3-ubyte.gz: checksum mismatch" in message
    assert f"{empty.url}train-images-idx3-ubyte.gz: HTTP 404" in message
    assert f"{dead}train-images-idx3-ubyte.gz: " in message and "refused" in message.lower()
    assert "MNIST_DIR" in message
    # Nothing half-written is left behind under a final or temporary name.
    assert list(target.iterdir()) == []


def test_files_already_present_are_not_downloaded_again(tmp_path: Path, good: _Mirror) -> None:
    target = tmp_path / "cache"
    mnist.download(target, [good.url], log=lambda _: None)
    good.requests.clear()
    mnist.download(target, [good.url], log=lambda _: None)
    assert good.requests == []
    _assert_complete(target)


def test_an_invalid_file_present_is_replaced(tmp_path: Path, good: _Mirror, mnist_dir: Path) -> None:
    target = tmp_path / "cache"
    target.mkdir()
    for name in mnist.FILES:
        (target / name).write_bytes((mnist_dir / name).read_bytes())
    (target / "t10k-labels-idx1-ubyte.gz").write_bytes(b"truncated")
    mnist.download(target, [good.url], log=lambda _: None)
    assert good.requests == ["/mnist/t10k-labels-idx1-ubyte.gz"]
    _assert_complete(target)


def test_mnist_dir_is_used_without_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_dir: Path, good: _Mirror
) -> None:
    monkeypatch.setenv("MNIST_DIR", str(mnist_dir))
    assert datasets.find_mnist(tmp_path / "no-shared", tmp_path / "cache", [good.url]) == mnist_dir
    assert good.requests == []
    assert not (tmp_path / "cache").exists()


def test_mnist_dir_missing_files_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    monkeypatch.setenv("MNIST_DIR", str(tmp_path))
    with pytest.raises(mnist.MnistError, match=r"lacks train-labels-idx1-ubyte.gz, t10k-images"):
        datasets.find_mnist(tmp_path / "no-shared", tmp_path / "cache")
    monkeypatch.setenv("MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(mnist.MnistError, match="is not a folder"):
        datasets.find_mnist(tmp_path / "no-shared", tmp_path / "cache")


def test_without_mnist_dir_it_downloads_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, good: _Mirror
) -> None:
    monkeypatch.delenv("MNIST_DIR", raising=False)
    found = datasets.find_mnist(tmp_path / "no-shared", tmp_path / "cache", [good.url], log=lambda _: None)
    assert found == tmp_path / "cache"
    _assert_complete(tmp_path / "cache")


# -- where tests find MNIST (the mnist_dir fixture): MNIST_DIR, else ../shared/mnist, else the cache -----

def _shared_copy(folder: Path, mnist_dir: Path, names=mnist.FILES) -> Path:
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(mnist_dir / name)
    return folder


def test_find_mnist_takes_mnist_dir_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_dir: Path,
                                          good: _Mirror) -> None:
    monkeypatch.setenv("MNIST_DIR", str(mnist_dir))
    shared = _shared_copy(tmp_path / "shared", mnist_dir)
    assert datasets.find_mnist(shared, tmp_path / "cache", [good.url]) == mnist_dir
    assert good.requests == [] and not (tmp_path / "cache").exists()


def test_find_mnist_takes_the_shared_copy_without_fetching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           mnist_dir: Path, good: _Mirror) -> None:
    monkeypatch.delenv("MNIST_DIR", raising=False)
    shared = _shared_copy(tmp_path / "shared", mnist_dir)
    assert datasets.find_mnist(shared, tmp_path / "cache", [good.url]) == shared
    assert good.requests == [] and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("shared_files", [(), mnist.FILES[:3]], ids=["absent", "incomplete"])
def test_find_mnist_fetches_into_the_cache_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                mnist_dir: Path, good: _Mirror, shared_files) -> None:
    monkeypatch.delenv("MNIST_DIR", raising=False)
    shared = _shared_copy(tmp_path / "shared", mnist_dir, shared_files) if shared_files else tmp_path / "none"
    cache = tmp_path / "cache"
    logged: list[str] = []
    assert datasets.find_mnist(shared, cache, [good.url], log=logged.append) == cache
    _assert_complete(cache)
    assert sorted(good.requests) == sorted(f"/mnist/{name}" for name in mnist.FILES)
    assert f"MNIST is not in {shared}" in logged[0]
    good.requests.clear()  # the next session finds the cache valid and fetches nothing
    assert datasets.find_mnist(shared, cache, [good.url], log=logged.append) == cache
    assert good.requests == []


def test_mnist_mirrors_replaces_the_public_mirrors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  good: _Mirror) -> None:
    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setenv("MNIST_MIRRORS", f"http://127.0.0.1:9/nothing/ {good.url}")
    assert mnist.configured_mirrors() == ("http://127.0.0.1:9/nothing/", good.url)
    assert datasets.find_mnist(tmp_path / "none", tmp_path / "cache", log=lambda _: None) == tmp_path / "cache"
    _assert_complete(tmp_path / "cache")
    assert len(good.requests) == 4
    monkeypatch.setenv("MNIST_MIRRORS", " ")
    assert mnist.configured_mirrors() == mnist.MIRRORS


def test_find_mnist_with_nothing_to_fetch_from_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               corrupt: _Mirror) -> None:
    monkeypatch.delenv("MNIST_DIR", raising=False)
    with pytest.raises(mnist.MnistError, match="set MNIST_DIR to their folder, or set MNIST_MIRRORS"):
        datasets.find_mnist(tmp_path / "none", tmp_path / "cache", [corrupt.url], log=lambda _: None)
    assert list((tmp_path / "cache").iterdir()) == []
