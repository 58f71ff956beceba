"""The entry points: one module per command, each `python -m tf1compat.commands.NAME` and
the console script NAME. A command defines its flags, parses them once and calls the
library's `run`; cli.run_main maps what it raises to the exit-code contract. The flags
(flags, tool_flags), the flag reference and cli live here too: the only code that imports
absl.flags. May import every other wing; none imports this one.
"""
