"""``python -m trajstore`` runs the ``trajstore`` command."""

from trajstore.cli import main

main()
