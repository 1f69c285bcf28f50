"""Build hook: the wheel carries the repository's default pipeline.yaml, weights/ and the hint files' JSON Schema.

They stay where a newcomer looks for them (top-level ``pipeline.yaml`` and ``weights/``, one
copy in git); building a wheel copies them into ``colorize_batch/_data/``, where
``config.installed_file`` finds them with ``importlib.resources`` from any working folder.
An editable install (``pip install -e``) finds the checkout's own files instead.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DATA = ["pipeline.yaml", "weights/README.md", "schemas/hints.schema.json", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "weights").glob("*.pt"))]


class BuildPyWithData(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "colorize_batch" / "_data"
        for rel in DATA:
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / rel, dest)


setup(cmdclass={"build_py": BuildPyWithData})
