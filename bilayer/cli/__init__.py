"""Command-line interface: one module per subcommand, each exposing `register(subparsers)`."""
