"""`python -m utils.serving`: the server's command line (`utils.serving.cli`)."""

from .cli import main

main()
