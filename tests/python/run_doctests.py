"""Runs the examples in the docstrings of the measattn package (the extension's
functions and classes and the pure-Python modules) with doctest, against
whatever `import measattn` finds: the build tree under ctest, the installed
package in scripts/pip_check.sh. Exits non-zero on a failure or when a module
has no example. DocTestFinder finds the extension's functions (their
__module__ is "measattn._measattn") and, through the classes, their methods,
static methods and properties."""

import doctest
import importlib
import sys

import numpy as np

import measattn

MODULES = ["measattn", "measattn._measattn", "measattn.ot"]


def main() -> int:
    np.set_printoptions(precision=6, suppress=True)
    failed = attempted = 0
    for name in MODULES:
        if name == "measattn.ot" and not hasattr(measattn, "ot"):
            continue  # a build without the wasserstein module
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE |
                                 doctest.ELLIPSIS, extraglobs={"np": np, "measattn": measattn})
        failed += result.failed
        attempted += result.attempted
        print(f"doctest: {name}: {result.attempted} examples, {result.failed} failed")
        if result.attempted == 0:
            print(f"doctest: no examples found in {name}", file=sys.stderr)
            return 1
    print(f"doctest: {attempted} examples, {failed} failed")
    if attempted == 0:
        print("doctest: no examples found", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
