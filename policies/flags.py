"""Command lines read as Go's `flag` package reads them.

Tekton's entrypoint and the CNB lifecycle phases are Go programs that parse their arguments with
`flag.FlagSet.Parse`, so what a step runs is what that parser makes of its `args`, not what a
simpler reading suggests. Its rules (go/src/flag/flag.go, `parseOne`):

- parsing stops at the first argument that is not a flag (`x`, `-`, anything not starting with
  `-`); that argument and all after it are the positional arguments;
- `--` ends the flags and is consumed; everything after it is positional;
- `-name` and `--name` are the same flag; `-name=value` carries its value; a flag that is not a
  boolean takes the next argument as its value when it has no `=`, whatever that argument looks
  like (`-results --` sets results to `--`); a boolean flag never takes the next argument;
- `---x`, `-=x` and `--=x` are syntax errors; an undefined flag is an error (`-h` and `-help`
  ask for the usage), and an error makes the program exit before it does anything;
- a flag given twice keeps the last value.

Which names are booleans is the one thing the arguments do not say. `parse` therefore takes the
program's boolean flags, and either all its flags (the entrypoint: an unknown one is an error, as
in the program) or none, with `bare_values=False` (a lifecycle phase, whose flag set changes from
release to release): then every flag but the known booleans must carry its value after `=`, and
a bare one is refused as ambiguous instead of guessed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

TERMINATOR = "--"
TRUE_TEXT = frozenset({"1", "t", "T", "TRUE", "true", "True"})
FALSE_TEXT = frozenset({"0", "f", "F", "FALSE", "false", "False"})
"""What `strconv.ParseBool` accepts, which a boolean flag's `=value` must be."""
HELP = frozenset({"h", "help"})
MAX_KEPT_TOKENS = 64
MAX_KEPT_CHARS = 4096
"""The largest command line whose reading a cache may keep (`keepable`)."""


@dataclass(frozen=True)
class Flag:
    name: str
    value: str
    """As given; a boolean's as `true` or `false`, as Go stores it."""
    start: int
    """Index of the flag's first argument."""
    end: int
    """Index after its last argument (its value's, for `-name value`)."""


@dataclass(frozen=True)
class ParsedArgs:
    """The flags Go would set, in order, and the positional arguments after them."""

    flags: tuple[Flag, ...]
    positional: tuple[object, ...]
    error: str | None = None
    """Why Go would refuse the command line (the program then exits); None when it parses."""

    def values(self, name: str) -> tuple[str, ...]:
        """Every value given to a flag, in order (the last is the one a plain flag keeps)."""
        return tuple(flag.value for flag in self.flags if flag.name == name)

    def last(self, name: str) -> str | None:
        found = self.values(name)
        return found[-1] if found else None


def parse(args: Sequence[object], *, booleans: Collection[str],
          known: Collection[str] | None = None, bare_values: bool = True) -> ParsedArgs:
    """Parse `args` as `flag.FlagSet.Parse` does for a program with these flags.

    `known`: every flag the program defines (booleans included), or None to accept any name.
    `bare_values`: whether a non-boolean flag may take its value from the next argument; when
    False such a flag is reported as an error, since an unlisted boolean would not.
    """
    flags: list[Flag] = []
    index = 0
    while index < len(args):
        token = args[index]
        if not isinstance(token, str):
            return _stop(flags, args, index, f"argument {index} is not a string")
        if len(token) < 2 or not token.startswith("-"):
            break
        dashes = 2 if token[1] == "-" else 1
        if dashes == 2 and len(token) == 2:
            index += 1  # the terminator is consumed
            break
        body = token[dashes:]
        if not body or body[0] in "-=":
            return _stop(flags, args, index, f"bad flag syntax: {token}")
        name, equals, value = body.partition("=")
        start = index
        index += 1
        is_boolean = name in booleans
        if known is not None and name not in known and not is_boolean:
            reason = "help requested" if name in HELP else "flag provided but not defined"
            return _stop(flags, args, start, f"{reason}: -{name}")
        if is_boolean:
            if equals and value not in TRUE_TEXT | FALSE_TEXT:
                return _stop(flags, args, start, f"invalid boolean value {value!r} for -{name}")
            value = "false" if value in FALSE_TEXT and equals else "true"
        elif not equals:
            if not bare_values:
                return _stop(flags, args, start, f"-{name} has no =value, and whether it takes "
                                                 "the next argument depends on its type")
            if index >= len(args):
                return _stop(flags, args, start, f"flag needs an argument: -{name}")
            following = args[index]
            if not isinstance(following, str):
                return _stop(flags, args, index, f"argument {index} is not a string")
            value = following
            index += 1
        flags.append(Flag(name=name, value=value, start=start, end=index))
    return ParsedArgs(flags=tuple(flags), positional=tuple(args[index:]))


def keepable(tokens: Sequence[object]) -> bool:
    """Whether what is read from these tokens may be kept in a cache under `tuple(tokens)`:
    strings only (1, 1.0 and true are equal keys but different arguments), and few and short
    enough that a full cache stays small whatever a pod holds."""
    if len(tokens) > MAX_KEPT_TOKENS:
        return False
    chars = 0
    for token in tokens:
        if not isinstance(token, str):
            return False
        chars += len(token)
    return chars <= MAX_KEPT_CHARS


def _stop(flags: list[Flag], args: Sequence[object], index: int, error: str) -> ParsedArgs:
    return ParsedArgs(flags=tuple(flags), positional=tuple(args[index:]), error=error)
