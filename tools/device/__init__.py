"""MicroPython programs that the tools run on a board (through mpremote's raw
REPL) or on the unix port, each a whole .py file here that can be linted,
compiled (mpy-cross) and run on its own.

A program's parameters are never spliced into its text. program() reads the
file and puts one line in front of it, `ARGS = <literal>`, the repr() of plain
data (str, int, bool, None, lists, tuples, dicts of them), which it checks
reads back as the same value. Run on its own, a program without that line
takes its parameters from the command line instead, as its header says:

    MICROPYPATH=firmware:build/lib:.frozen build/venv/bin/micropython tools/device/hashes.py boot.py main.py

Programs run locally on the unix port (the validator, the benches) are run
as files, with their parameters on the command line.
"""
import ast
from pathlib import Path

DIR = Path(__file__).resolve().parent


def path(name):
    """The program file tools/device/<name>.py."""
    return DIR / f"{name}.py"


def program(name, args=None):
    """The text of tools/device/<name>.py to execute on a board, with
    `ARGS = repr(args)` as its first line when args is given."""
    text = path(name).read_text()
    if args is None:
        return text
    literal = repr(args)
    if ast.literal_eval(literal) != args:
        raise ValueError(f"{name}: ARGS must be plain data, not {literal[:80]}")
    return f"ARGS = {literal}\n{text}"
