"""Build hook: the wheel carries the runtime data that lives at the top of the source tree.

``tokenizers/`` and ``config/`` (and the shipped ``models/anygpt-nano`` bundle, when present) are
the source of truth in a checkout; a built package gets a copy under ``anygpt/_data/``, which
``anygpt.paths`` prefers when it exists.  Editable installs read the checkout directly.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DATA = {
    "tokenizers": ROOT / "tokenizers",
    "config": ROOT / "config",
    "models/anygpt-nano": ROOT / "models" / "anygpt-nano",
}
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


class BuildWithData(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "anygpt" / "_data"
        for rel, src in DATA.items():
            if src.is_dir():
                dst = target / rel
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst, ignore=SKIP)


setup(cmdclass={"build_py": BuildWithData})
