"""``python -m genfield`` (and ``torchrun -m genfield``) runs the command line."""

from genfield.cli import main

main()
