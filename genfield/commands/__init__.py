"""The CLI commands, one module each: ``fit``, ``train``, ``reconstruct``, ``compare``, ``demo``.

``genfield.cli`` parses the command name and dispatches (``fit`` with argparse, the others as Hydra
applications through :func:`genfield.app.run_hydra_command`); :mod:`genfield.commands.base` holds
what they share.
"""
