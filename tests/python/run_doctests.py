"""Runs the examples in the docstrings of the measattn package (the extension's
functions and classes and the pure-Python modules) with doctest, against
whatever `import measattn` finds: the build tree under ctest, the installed
package in scripts/pip_check.sh. Exits non-zero on a failure or when no
example was found."""

import doctest
import importlib
import sys

import numpy as np

import measattn

MODULES = ["measattn", "measattn._measattn"]


def main() -> int:
    np.set_printoptions(precision=6, suppress=True)
    failed = attempted = 0
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE |
                                 doctest.ELLIPSIS, extraglobs={"np": np, "measattn": measattn})
        failed += result.failed
        attempted += result.attempted
    print(f"doctest: {attempted} examples, {failed} failed")
    if attempted == 0:
        print("doctest: no examples found", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
