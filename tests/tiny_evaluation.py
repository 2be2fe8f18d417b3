"""A real `indexer evaluate --to-home` run, kept tiny (a handful of photos, two transforms, two
methods), for the tests of GetEvaluationReport and the console's Evaluation page."""

from __future__ import annotations

import shutil
from pathlib import Path

from hashsvc.home import DataHome
from tests.conftest import PHOTOS, run_indexer

PHOTO_COUNT = 5


def make_report(home: DataHome, scratch: Path) -> None:
    originals = scratch / "originals"
    originals.mkdir()
    for path in sorted(PHOTOS.iterdir())[:PHOTO_COUNT]:
        shutil.copy(path, originals / path.name)
    run_indexer(home, "evaluate", str(originals), "--to-home", "--transformed", "2",
                "--transforms", "jpeg_q90,rotate_90", "--methods", "pdq,pdq+dihedral",
                "--workers", "1", "--list-size", "1000", check=True)
