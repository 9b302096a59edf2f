import os
import sys

# `python mpl ...` puts this folder (not the repo root) first on sys.path; make the checkout's
# package importable even when it is not installed in the environment.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mpltools.cli import main  # noqa: E402

main()
