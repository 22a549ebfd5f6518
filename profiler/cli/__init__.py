"""The `ssm-profile` command line: one module per subcommand (see ``COMMANDS`` in main.py)."""
