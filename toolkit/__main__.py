"""``python -m toolkit`` runs the ``tk`` command line."""

from toolkit.cli import main

main()
