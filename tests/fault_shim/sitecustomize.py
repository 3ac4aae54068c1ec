"""Fault injection for tests/test_fault_injection.py (on PYTHONPATH of a `cfrg` subprocess only): once the
process has written CFRG_FAULT_BYTES bytes through Python files opened for writing under CFRG_FAULT_DIR, every
further write there fails with CFRG_FAULT_ERRNO (default ENOSPC), as a full disk or a failing device would.
Writes by C++ code (OpenCV's video writer) are not reached; the tests do not ask for a video."""
import builtins
import errno
import io
import os

_limit = os.environ.get("CFRG_FAULT_BYTES")
_folder = os.environ.get("CFRG_FAULT_DIR")
if _limit is not None and _folder:
    _budget = [int(_limit)]
    _code = int(os.environ.get("CFRG_FAULT_ERRNO", errno.ENOSPC))
    _open = io.open

    class _Failing:
        def __init__(self, f, name):
            self._f, self._name = f, name

        def write(self, data):
            _budget[0] -= len(data)
            if _budget[0] < 0:
                raise OSError(_code, os.strerror(_code), self._name)
            return self._f.write(data)

        def __getattr__(self, attr):
            return getattr(self._f, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def __iter__(self):
            return iter(self._f)

    def _faulty_open(file, mode="r", *args, **kwargs):
        f = _open(file, mode, *args, **kwargs)
        if any(m in mode for m in "wax+") and isinstance(file, (str, os.PathLike)) and \
                os.path.abspath(os.fspath(file)).startswith(os.path.abspath(_folder)):
            return _Failing(f, os.fspath(file))
        return f

    builtins.open = io.open = _faulty_open
