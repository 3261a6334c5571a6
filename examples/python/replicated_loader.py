"""Make the sqlite-replicated extension available to Python's stdlib ``sqlite3`` module.

    import sqlite3, replicated_loader
    replicated_loader.load()          # or load("/path/to/libreplicated.so")
    con = sqlite3.connect("file:app.db?vfs=replicated&node=1&peers=1@127.0.0.1:7001"
                          "&secret=change-me-16-chars-min", uri=True)

After ``load()`` the VFS ``replicated`` is registered for the whole process and stays registered
(the extension returns SQLITE_OK_LOAD_PERMANENTLY and is linked ``-z nodelete``). Two ways, chosen
automatically:

* ``"load_extension"`` — when ``sqlite3.Connection.enable_load_extension`` exists (e.g. Debian's
  ``/usr/bin/python3``): a throw-away ``:memory:`` connection loads the library, then is closed.
* ``"auto_extension"`` — when the interpreter was built without loadable-extension support (pyenv's
  default and many other builds): load our library with ``ctypes.CDLL(path, RTLD_GLOBAL)``, find the
  ``libsqlite3`` that ``_sqlite3`` is linked against, hand ``sqlite3_replicated_auto_init`` (the
  entry point's auto-extension flavour, which returns SQLITE_OK) to its ``sqlite3_auto_extension``, then open and close one ``:memory:`` connection. That plain open is
  what runs the init and registers the VFS: SQLite runs auto-extensions at the end of an open, *after*
  it has looked up the URI's ``vfs=``, so the very first connection must not name ``vfs=replicated``.
  Every later connection runs the (idempotent) init as well.

The ctypes way needs ``_sqlite3`` to be dynamically linked to a shared libsqlite3: registering with
another copy of SQLite would have no effect on ``sqlite3.connect``. ``load()`` checks that the
extension really reached the module's SQLite (its SQL functions exist on the bootstrap connection)
and raises ``LoaderError`` otherwise. ``load()`` is idempotent and thread-safe.

Command line: ``python3 replicated_loader.py [LIB]`` loads and prints the method used.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["load", "default_lib_path", "LoaderError"]

_lock = threading.Lock()
_loaded: dict[str, str] = {}  # resolved library path -> method used
_keep: list = []  # ctypes handles kept alive for the life of the process


class LoaderError(RuntimeError):
    pass


def default_lib_path() -> Path:
    """``$REPLICATED_LIB`` if set, else ``target/release/libreplicated.so`` of this checkout."""
    env = os.environ.get("REPLICATED_LIB")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "target" / "release" / "libreplicated.so"


def load(lib_path=None) -> str:
    """Register the extension with the stdlib sqlite3 module; returns ``"load_extension"`` or
    ``"auto_extension"`` (the method used). Calling it again is a no-op that returns the same."""
    path = _resolve(lib_path)
    with _lock:
        if str(path) not in _loaded:
            if hasattr(sqlite3.Connection, "enable_load_extension"):
                _loaded[str(path)] = _via_load_extension(path)
            else:
                _loaded[str(path)] = _via_auto_extension(path)
        return _loaded[str(path)]


def _resolve(lib_path) -> Path:
    p = Path(lib_path) if lib_path is not None else default_lib_path()
    if not p.exists() and p.with_name(p.name + ".so").exists():  # ".../libreplicated", as .load takes it
        p = p.with_name(p.name + ".so")
    if not p.exists():
        raise LoaderError(f"extension library not found: {p}")
    return p.resolve()


def _via_load_extension(path: Path) -> str:
    con = sqlite3.connect(":memory:")
    try:
        con.enable_load_extension(True)
        con.load_extension(str(path))  # entry point sqlite3_replicated_init, derived from the file name
        con.enable_load_extension(False)
        _check(con, path)
    finally:
        con.close()  # the VFS stays registered: the init returned SQLITE_OK_LOAD_PERMANENTLY
    return "load_extension"


def _via_auto_extension(path: Path) -> str:
    libsqlite = _host_libsqlite3()
    ext = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    # sqlite3_replicated_auto_init is the auto-extension flavour of the entry point: it returns
    # SQLITE_OK, where sqlite3_replicated_init returns SQLITE_OK_LOAD_PERMANENTLY (256), which
    # SQLite's auto-extension loop would record as "automatic extension loading failed".
    try:
        init = ext.sqlite3_replicated_auto_init
    except AttributeError as e:
        raise LoaderError(f"{path} does not export sqlite3_replicated_auto_init") from e
    auto = libsqlite.sqlite3_auto_extension
    auto.argtypes = [ctypes.c_void_p]
    auto.restype = ctypes.c_int
    rc = auto(ctypes.cast(init, ctypes.c_void_p))  # the same pointer twice is a no-op in SQLite
    if rc != 0:
        raise LoaderError(f"sqlite3_auto_extension failed with code {rc}")
    _keep.extend([ext, libsqlite])
    # The bootstrap open: auto-extensions run after the VFS lookup, so this plain connection is what
    # registers the "replicated" VFS for the connections opened after it.
    con = sqlite3.connect(":memory:")
    try:
        _check(con, path)
    finally:
        con.close()
    return "auto_extension"


def _check(con: sqlite3.Connection, path: Path) -> None:
    n = con.execute("SELECT count(*) FROM pragma_function_list WHERE name = 'replicated_status'").fetchone()[0]
    if not n:
        raise LoaderError(
            f"{path} was registered but replicated_status() is missing on a new connection: the "
            "extension did not reach the SQLite that Python's sqlite3 module uses")


def _host_libsqlite3() -> ctypes.CDLL:
    """The libsqlite3 that the _sqlite3 module of this interpreter is linked against."""
    import _sqlite3

    mod = getattr(_sqlite3, "__file__", None)
    candidates = _mapped_libsqlite3()  # already in this process because _sqlite3 is imported
    if mod:
        candidates += [p for p in _ldd_libsqlite3(mod) if p not in candidates]
    found = ctypes.util.find_library("sqlite3")
    if found and found not in candidates:
        candidates.append(found)
    for cand in candidates:
        try:
            lib = ctypes.CDLL(cand, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        if _version(lib) == sqlite3.sqlite_version:
            return lib
    raise LoaderError(
        "could not find the shared libsqlite3 that Python's _sqlite3 module uses "
        f"(sqlite3.sqlite_version={sqlite3.sqlite_version}, _sqlite3={mod}, tried {candidates}); "
        "if SQLite is compiled into _sqlite3, use a Python with enable_load_extension or apsw")


def _mapped_libsqlite3() -> list[str]:
    out: list[str] = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 6 and re.search(r"/libsqlite3[^/]*\.so", fields[-1]) and fields[-1] not in out:
                    out.append(fields[-1])
    except OSError:
        pass
    return out


def _ldd_libsqlite3(module_file: str) -> list[str]:
    try:
        r = subprocess.run(["ldd", module_file], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [m.group(1) for m in re.finditer(r"libsqlite3\S*\s+=>\s+(\S+)", r.stdout)]


def _version(lib: ctypes.CDLL):
    try:
        f = lib.sqlite3_libversion
    except AttributeError:
        return None
    f.restype = ctypes.c_char_p
    f.argtypes = []
    return f().decode()


if __name__ == "__main__":
    print(load(sys.argv[1] if len(sys.argv) > 1 else None))
