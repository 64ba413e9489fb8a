"""storytune's one YAML loader: numbers as users write them, and no silently repeated keys.

PyYAML follows YAML 1.1, where `1e-4` and `3E-5` (no dot) are strings and `1:20` is the integer 80.
`load_yaml` resolves numbers the YAML 1.2 way (as Hydra/OmegaConf and most ML configs read them):

- floats: `1e-4`, `3E-5`, `1.5`, `.5`, `1.`, `2.0e-3`, `.inf`, `.nan`; ints: `1000`, `1_000`, `0x1f`,
  `0o17` (a leading zero is decimal: `017` is 17); underscores are allowed between digits as in Python;
- `1:20`-style sexagesimal numbers stay strings (YAML 1.2 dropped them).

Every number keeps the text it was written as (`number_text`), so a key whose schema wants a string
(a run name `1e3`, a tag `2024_01`) gets exactly what the user wrote, not a reformatted number.
Booleans, nulls and everything else resolve as before (YAML 1.1 / PyYAML's safe loader).

A mapping with the same key twice raises `DuplicateKeyError` naming the key and both lines, instead
of keeping the last value without a word.

`dump_yaml` writes with the same rules, so a string that `load_yaml` would read as a number (a run
name `1e3`) is quoted and every file storytune writes reads back as written.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode

FLOAT_TAG = "tag:yaml.org,2002:float"
INT_TAG = "tag:yaml.org,2002:int"
MERGE_TAG = "tag:yaml.org,2002:merge"

_DIGITS = r"[0-9](?:_?[0-9])*"  # digits with single underscores between them, as Python allows
_EXPONENT = r"[eE][-+]?[0-9]+"
FLOAT_PATTERN = re.compile(
    rf"""^(?:[-+]?{_DIGITS}\.(?:{_DIGITS})?(?:{_EXPONENT})?   # 1.5  1.  1.5e-3
          |[-+]?\.{_DIGITS}(?:{_EXPONENT})?                  # .5  .5e3
          |[-+]?{_DIGITS}{_EXPONENT}                         # 1e-4  3E-5  1_000e3
          |[-+]?\.(?:inf|Inf|INF)
          |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)
INT_PATTERN = re.compile(
    rf"""^(?:[-+]?{_DIGITS}                 # 1000  1_000  017 (decimal)
          |[-+]?0x[0-9a-fA-F](?:_?[0-9a-fA-F])*
          |[-+]?0o[0-7](?:_?[0-7])*
          |[-+]?0b[01](?:_?[01])*)$""",
    re.VERBOSE,
)
_FIRST_CHARS = list("-+0123456789.")


class YamlInt(int):
    """An int read from YAML, with the text it was written as (`number_text`)."""

    yaml_text: str


class YamlFloat(float):
    """A float read from YAML, with the text it was written as (`number_text`)."""

    yaml_text: str


def number_text(value: Any) -> str | None:
    """The text a number read by `load_yaml` was written as (`1e-4`, `1_000`); None for anything else."""
    return getattr(value, "yaml_text", None) if isinstance(value, (YamlInt, YamlFloat)) else None


def plain(value: Any) -> Any:
    """`value` with every YamlInt/YamlFloat turned into a plain int/float (in lists and dicts too):
    for data that leaves the config layer (dumped YAML, pickles, hashes)."""
    if isinstance(value, YamlInt):
        return int(value)
    if isinstance(value, YamlFloat):
        return float(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    return value


class DuplicateKeyError(ConstructorError):
    """A mapping holds the same key twice; `key`, `first_line` and `second_line` (1-based) say where."""

    def __init__(self, key: Any, first_line: int, second_line: int, mark: Any) -> None:
        self.key = key
        self.first_line = first_line
        self.second_line = second_line
        super().__init__(None, None, f"duplicate key {key!r} (lines {first_line} and {second_line})", mark)


def _sign_and_digits(text: str) -> tuple[int, str]:
    text = text.replace("_", "")
    if text[:1] in "+-":
        return (-1 if text[0] == "-" else 1), text[1:]
    return 1, text


class StoryLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 numbers and duplicate-key detection (see module docs)."""

    def construct_yaml_int(self, node: ScalarNode) -> YamlInt:
        text = str(self.construct_scalar(node))
        sign, digits = _sign_and_digits(text)
        base = {"0x": 16, "0o": 8, "0b": 2}.get(digits[:2].lower(), 10)
        value = YamlInt(sign * int(digits[2:] if base != 10 else digits, base))
        value.yaml_text = text
        return value

    def construct_yaml_float(self, node: ScalarNode) -> YamlFloat:
        text = str(self.construct_scalar(node))
        value = YamlFloat(float(super().construct_yaml_float(node)))
        value.yaml_text = text
        return value

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            self._check_duplicates(node)
        return super().construct_mapping(node, deep=deep)

    def _check_duplicates(self, node: MappingNode) -> None:
        # Checked on the keys as written, before `<<` merges are flattened in (a key that overrides
        # a merged one is how merges are meant to be used, not a duplicate).
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML reports it itself
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise DuplicateKeyError(plain(key), first, line, key_node.start_mark)
            seen[key] = line


class StoryDumper(yaml.SafeDumper):
    """PyYAML's safe dumper resolving plain scalars as `StoryLoader` reads them (quotes `'1e3'`)."""


def _install_resolvers() -> None:
    # A copy of the safe loader's implicit resolvers without its YAML 1.1 int/float ones, then ours;
    # the dumper gets the same ones, so it quotes every string the loader would read as a number.
    for cls in (StoryLoader, StoryDumper):
        cls.yaml_implicit_resolvers = {
            char: [(tag, regexp) for tag, regexp in resolvers if tag not in (INT_TAG, FLOAT_TAG)]
            for char, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }
        cls.add_implicit_resolver(FLOAT_TAG, FLOAT_PATTERN, _FIRST_CHARS)
        cls.add_implicit_resolver(INT_TAG, INT_PATTERN, _FIRST_CHARS)
    StoryLoader.add_constructor(INT_TAG, StoryLoader.construct_yaml_int)
    StoryLoader.add_constructor(FLOAT_TAG, StoryLoader.construct_yaml_float)
    StoryDumper.add_representer(YamlInt, yaml.representer.SafeRepresenter.represent_int)
    StoryDumper.add_representer(YamlFloat, yaml.representer.SafeRepresenter.represent_float)


_install_resolvers()


def load_yaml(text: str) -> Any:
    """Parse one YAML document with `StoryLoader` (raises yaml.YAMLError, DuplicateKeyError included)."""
    return yaml.load(text, Loader=StoryLoader)  # noqa: S506 -- StoryLoader is a SafeLoader


def dump_yaml(data: Any) -> str:
    """YAML text of `data` that `load_yaml` reads back as `data` (key order kept)."""
    return yaml.dump(data, Dumper=StoryDumper, sort_keys=False)
