"""One module per `scratchdet` subcommand; see scratchdet/cli.py."""
