"""`python -m mpltools ...` is `mpl ...` (and `accelerate launch -m mpltools train ...` works from anywhere)."""

from mpltools.cli import main

if __name__ == "__main__":
    main()
