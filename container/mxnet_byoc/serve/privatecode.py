"""One model's own code imported under a private package, so that models of one server whose code has modules of
the same name (every model's `inference.py`, each its own `utils.py`) never see each other's.

A model's code folder becomes the package `_mxnet_byoc_models.m<N>`; its inference script is loaded as a module of
that package, and so is every module of the folder it imports. What makes a plain `import utils` in the script find
the model's own `utils.py`: each of the model's modules gets its own `__builtins__` whose `__import__` maps a name
that the folder holds to the private one (Python looks `__import__` up in the importing module's builtins, for
`import` statements in functions too). Names the folder does not hold (numpy, mxnet, the standard library) import
as usual, once for all models. Relative imports work unchanged.

Some imports look a module up by its public name in `sys.modules` (pickle, `importlib.import_module`): while the
model's code runs in a thread (`active`), such a name that the folder holds is put in `sys.modules` under its
public name too, and taken out when the call ends. Another model's code asking for the same public name in
another thread at that very moment could get this model's module; static imports never can.

Nothing here is needed with one model per server: script.py then imports the script the plain way.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import sys
import threading
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = "_mxnet_byoc_models"
_counter = itertools.count(1)
_owners: weakref.WeakValueDictionary[str, PrivateCode] = weakref.WeakValueDictionary()  # package -> its code
_active = threading.local()  # .code: the PrivateCode whose model's function runs in this thread
_real_import = builtins.__import__
_install_lock = threading.Lock()


class PrivateCode:
    """The modules of `folders` (the model's code folder, first), importable only by the model's own code."""

    def __init__(self, folders: Sequence[Path], label: str):
        self.folders = [str(Path(f)) for f in folders]
        self.label = label  # for messages: the model's name
        self.package = f"{ROOT}.m{next(_counter)}"
        self._owned: dict[str, bool] = {}
        self._aliases = threading.local()
        self.builtins = dict(builtins.__dict__)
        self.builtins["__import__"] = self._import
        _install()
        package = ModuleType(self.package, f"the code of model {label}")
        package.__path__ = list(self.folders)
        package.__package__ = self.package
        package.__builtins__ = self.builtins  # type: ignore[attr-defined]
        sys.modules[self.package] = package
        _owners[self.package] = self

    def load_file(self, path: Path, name: str) -> ModuleType:
        """The script at `path` executed as `<package>.<name>` with the model's builtins. Raises what it raises."""
        full = f"{self.package}.{name}"
        spec = importlib.util.spec_from_file_location(full, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"{path} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        module.__builtins__ = self.builtins  # type: ignore[attr-defined]
        sys.modules[full] = module
        try:
            with self.active():
                spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(full, None)
            raise
        return module

    def owns(self, top: str) -> bool:
        """Whether the model's folders hold a module or package named `top`."""
        owned = self._owned.get(top)
        if owned is None:
            owned = importlib.machinery.PathFinder.find_spec(top, self.folders) is not None
            self._owned[top] = owned
        return owned

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The model's code runs in this thread for the block: its modules answer to their public names in
        sys.modules for lookups by name (pickle, importlib), until the block ends."""
        previous = getattr(_active, "code", None)
        _active.code = self
        aliases: list[str] = []
        self._aliases.names = aliases
        try:
            yield
        finally:
            _active.code = previous
            for name in aliases:
                module = sys.modules.get(name)
                if module is not None and getattr(module, "__name__", "").startswith(self.package + "."):
                    del sys.modules[name]
            aliases.clear()

    def close(self) -> None:
        """Forget the model's modules (they go once nothing else refers to them)."""
        for name in [n for n in sys.modules if n == self.package or n.startswith(self.package + ".")]:
            del sys.modules[name]
        _owners.pop(self.package, None)

    def _import(self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        if level or not name:
            return _real_import(name, globals, locals, fromlist, level)
        top = name.partition(".")[0]
        if not self.owns(top):
            return _real_import(name, globals, locals, fromlist, level)
        module = _real_import(f"{self.package}.{name}", globals, locals, fromlist, 0)
        if getattr(_active, "code", None) is self:
            self._alias(name)
        return module if fromlist else sys.modules[f"{self.package}.{top}"]

    def _alias(self, name: str) -> None:
        """Put the private modules of `name` and its parents in sys.modules under their public names (pickle's
        lookup after its import), to be taken out when the active block ends."""
        aliases = getattr(self._aliases, "names", None)
        if aliases is None:
            return
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            public = ".".join(parts[:i])
            if public not in sys.modules:
                private = sys.modules.get(f"{self.package}.{public}")
                if private is not None:
                    sys.modules[public] = private
                    aliases.append(public)


class _Loader(importlib.abc.Loader):
    """A module of a model's package, executed with the model's builtins."""

    def __init__(self, inner: Any, code: PrivateCode):
        self.inner, self.code = inner, code

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__builtins__ = self.code.builtins  # type: ignore[attr-defined]
        self.inner.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, ...: the file loader's own
        return getattr(self.inner, name)


class _AliasLoader(importlib.abc.Loader):
    """Answers a public name with the active model's private module (importlib.import_module of its own code)."""

    def __init__(self, module: ModuleType):
        self.module = module

    def create_module(self, spec: Any) -> ModuleType:
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        pass


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the modules of the models' packages, and the active model's modules by their public names."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname.startswith(ROOT + "."):
            owner = _owners.get(".".join(fullname.split(".")[:2]))
            if owner is None or fullname == owner.package:
                return None
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader, owner)
            return spec
        code = getattr(_active, "code", None)
        if code is None or not code.owns(fullname.partition(".")[0]):
            return None
        module = importlib.import_module(f"{code.package}.{fullname}")
        aliases = getattr(code._aliases, "names", None)
        if aliases is not None:
            aliases.append(fullname)
        return importlib.util.spec_from_loader(fullname, _AliasLoader(module))


def _install() -> None:
    with _install_lock:
        if ROOT not in sys.modules:
            root = ModuleType(ROOT, "the private packages of the models' code")
            root.__path__ = []
            sys.modules[ROOT] = root
        if not any(isinstance(f, _Finder) for f in sys.meta_path):
            sys.meta_path.insert(0, _Finder())
