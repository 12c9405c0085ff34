"""Compiler passes: one transformation per module, each callable from Python and from the CLI."""
