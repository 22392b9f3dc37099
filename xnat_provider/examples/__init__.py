"""The provider's example DAGs, as files to copy into an Airflow DAGs folder.

``dags/`` at the top of the source repository is where the example DAGs live; the wheel carries a copy of them
here, in this package's folder (see ``[tool.hatch.build.targets.wheel.force-include]`` in pyproject.toml).
From a source checkout or an editable install, this folder has no DAGs and the repository's ``dags/`` is used.

    python -m xnat_provider.examples                               # list them
    python -m xnat_provider.examples --copy-to "$AIRFLOW_HOME/dags"

Airflow does not read them from here: they run once copied into a DAGs folder (or a DAG bundle). They need the
``examples`` extra (NumPy) and an ``xnat_default`` connection; the README describes their settings.
"""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

__all__ = ["copy_to", "dag_files"]

_HERE = Path(__file__).resolve().parent
_SOURCE_DAGS = _HERE.parent.parent / "dags"  # the repository's dags/, for a source checkout or editable install


def dag_files() -> list[Path]:
    """The example DAG files: those shipped in this package, else those of the source checkout's ``dags/``."""
    for folder in (_HERE, _SOURCE_DAGS):
        files = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))
        if files:
            return files
    raise FileNotFoundError(f"no example DAGs in {_HERE} (an installed wheel) nor in {_SOURCE_DAGS} (a source tree)")


def copy_to(folder: str | Path, *, overwrite: bool = False) -> dict[Path, str]:
    """Copy the example DAGs into ``folder`` (created if missing); returns each target and what was done.

    A file already there with the same content is left as it is ("unchanged"). One with other content is replaced
    only with ``overwrite=True`` ("replaced"); otherwise :class:`FileExistsError` is raised before anything is
    copied, naming every such file.
    """
    folder = Path(folder)
    sources = dag_files()
    targets = {src: folder / src.name for src in sources}
    differing = [t for s, t in targets.items() if t.exists() and not filecmp.cmp(s, t, shallow=False)]
    if differing and not overwrite:
        raise FileExistsError("these files exist with other content (use --overwrite to replace them): "
                              + ", ".join(str(t) for t in differing))
    folder.mkdir(parents=True, exist_ok=True)
    done: dict[Path, str] = {}
    for src, target in targets.items():
        if target.exists() and target not in differing:
            done[target] = "unchanged"
            continue
        done[target] = "replaced" if target in differing else "copied"
        shutil.copyfile(src, target)
    return done
