"""``python -m certify`` is the ``lipcert`` command."""

from certify.cli import main

main()
