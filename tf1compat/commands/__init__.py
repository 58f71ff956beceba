"""The entry points: one module per command, each `python -m tf1compat.commands.NAME` and
the console script NAME. A command defines its flags, parses them once and calls the
library's `run`; cli.run_main maps what it raises to the exit-code contract.
"""
