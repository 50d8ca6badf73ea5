"""Hydra applications of the CLI commands other than ``train`` (see :mod:`genfield.app`)."""
