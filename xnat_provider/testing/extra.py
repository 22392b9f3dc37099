"""The ``testing`` extra: which modules it brings, and the error that says how to install it.

A module of its own, importing nothing but the standard library, so that both ends can use it without an import
circle: the package (``__init__.py``, which re-exports :class:`MissingTestingExtraError` lazily and must stay cheap
to import) and the modules that import an extra's dependency (``uploads.py`` guards python-multipart), which are
themselves imported by the emulator the package exports.
"""

from __future__ import annotations

TESTING_EXTRA_INSTALL = "pip install 'airflow-provider-xnat[testing]'"

# Modules the emulator imports that the provider's runtime dependencies do not bring: import name -> distribution.
TESTING_EXTRA_MODULES = {"python_multipart": "python-multipart"}


class MissingTestingExtraError(ModuleNotFoundError):
    """The emulator was used without the ``testing`` extra (a :class:`ModuleNotFoundError`, so also an ImportError)."""


def missing_testing_extra(exc: ModuleNotFoundError) -> MissingTestingExtraError | None:
    """The error to raise in place of ``exc`` when the module missing is one of the ``testing`` extra's.

    None when the missing module is something else (then ``exc`` is a real bug, not a missing extra)."""
    top = (exc.name or "").partition(".")[0]
    if top not in TESTING_EXTRA_MODULES:
        return None
    return MissingTestingExtraError(
        f"The XNAT emulator (xnat_provider.testing) needs {TESTING_EXTRA_MODULES[top]}, which is not installed "
        f"(import of {top!r} failed). It comes with the provider's `testing` extra: {TESTING_EXTRA_INSTALL}",
        name=exc.name, path=exc.path)
