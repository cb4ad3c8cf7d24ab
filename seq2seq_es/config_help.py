"""`seq2seq-es train --help` and `seq2seq-es config`: every config key with its type, default and
meaning, and the resolved config as YAML.

One source of truth: the meaning of a key is the `# comment` after its field in config.py, read
from that file's source at help time (`ast` finds the fields, `tokenize` the comments). A comment
continued on the next line(s), indented past the field, belongs to the field above. Types are the
annotations as written there, except that a `Literal[...]` shows its choices (`hf | sdpa | flex`);
defaults are the dataclass defaults, or the values a given task and model resolve to (`compose`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
from typing import Any, Mapping

import yaml

from . import config as config_module
from .config import (RunConfig, apply_mapping, compose, follow_target_length,
                     load_yaml, registry_layers)

_NOT_CODE = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
             tokenize.ENCODING, tokenize.ENDMARKER}


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    key: str          # section.field
    type: str         # the annotation as written in config.py (a Literal: its choices)
    meaning: str      # the field's comment, continuation lines joined; "" when it has none


def parse_field_comments(source: str) -> dict[str, dict[str, tuple[str, str]]]:
    """{class name: {field: (annotation, comment)}} for every annotated field of every class."""
    comments: dict[int, tuple[int, str]] = {}   # line -> (column, text without '#')
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = (tok.start[1], tok.string.lstrip("#").strip())
        elif tok.type not in _NOT_CODE:
            for line in range(tok.start[0], tok.end[0] + 1):
                code_lines.add(line)
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        fields = out.setdefault(node.name, {})
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            parts = []
            last = stmt.end_lineno
            if last in comments:
                parts.append(comments[last][1])
            line = last + 1
            # Comment-only lines right below, indented past the field: its comment, continued.
            while line in comments and line not in code_lines \
                    and comments[line][0] > stmt.col_offset:
                parts.append(comments[line][1])
                line += 1
            fields[stmt.target.id] = (type_text(stmt.annotation),
                                      " ".join(p for p in parts if p))
    return out


def type_text(annotation: ast.expr) -> str:
    """An annotation as help shows it: as written, but `Literal['hf', 'sdpa', 'flex']` as its
    choices, `hf | sdpa | flex` (also inside a union: `none | auto | must | str`)."""
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        return f"{type_text(annotation.left)} | {type_text(annotation.right)}"
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) in (
            "Literal", "typing.Literal"):
        choices = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) \
            else [annotation.slice]
        if all(isinstance(choice, ast.Constant) for choice in choices):
            return " | ".join(str(choice.value) for choice in choices)
    return ast.unparse(annotation)


@functools.lru_cache(maxsize=1)
def _config_source_fields() -> dict[str, dict[str, tuple[str, str]]]:
    try:
        source = inspect.getsource(config_module)
    except (OSError, TypeError):  # no source shipped: types from the annotations, no meanings
        return {}
    return parse_field_comments(source)


def sections(cfg: RunConfig | None = None) -> dict[str, Any]:
    """{section name: section dataclass instance} in RunConfig's order."""
    cfg = cfg or RunConfig()
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def key_docs() -> list[KeyDoc]:
    """Every config key in section and field order, with its type and meaning."""
    parsed = _config_source_fields()
    docs = []
    for section_name, section in sections().items():
        in_source = parsed.get(type(section).__name__, {})
        for f in dataclasses.fields(section):
            annotation, meaning = in_source.get(f.name, (_annotation_text(f.type), ""))
            docs.append(KeyDoc(f"{section_name}.{f.name}", annotation, meaning))
    return docs


def _annotation_text(annotation: Any) -> str:
    if isinstance(annotation, str):  # config.py's annotations are strings (PEP 563)
        try:
            return type_text(ast.parse(annotation, mode="eval").body)
        except SyntaxError:
            return annotation
    return getattr(annotation, "__name__", str(annotation))


def format_value(value: Any) -> str:
    """A value as it is typed on the command line (none, true, 0.9,0.999)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, str) and value == "":
        return "''"
    return str(value)


FOLLOWS = "follows data.max_target_length"


def value_sources(task: str, model: str, file_values: Mapping[str, Any],
                  overrides: Mapping[str, Any]) -> dict[str, str]:
    """{dotted key: the layer that changed it last}, replaying the layers `compose` applies (the
    task's defaults, the model's, the task's per-model entries, the YAML file, the command line)
    on a fresh RunConfig. Only a layer that changes a value is named: a YAML printed by
    `seq2seq-es config` and fed back does not mark every key as coming from --config."""
    from .models import get_model_spec

    model_spec = get_model_spec(model)
    cfg = RunConfig()
    cfg.data.task, cfg.model.name = task, model_spec.name
    layers = [*registry_layers(task, model_spec),
              ("--config", file_values), ("command line", overrides)]
    sources: dict[str, str] = {}
    before = _flat_values(cfg)
    for name, values in layers:
        apply_mapping(cfg, dict(values))
        after = _flat_values(cfg)
        sources.update({key: name for key, value in after.items() if value != before[key]})
        before = after
    # as compose: a file's key counts where it changed a value (the layer named above)
    chosen_in_file = {key for key, layer in sources.items() if layer == "--config"}
    follow_target_length(cfg, explicit=chosen_in_file | set(overrides))
    after = _flat_values(cfg)
    if after["gen.max_new_tokens"] != before["gen.max_new_tokens"]:
        sources["gen.max_new_tokens"] = FOLLOWS
    if after["gen.min_new_tokens"] != before["gen.min_new_tokens"]:
        sources["gen.min_new_tokens"] = "lowered to gen.max_new_tokens"
    return sources


def _flat_values(cfg: RunConfig) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in cfg.to_dict().items()
            for key, value in values.items()}


@dataclasses.dataclass
class Resolved:
    cfg: RunConfig
    sources: dict[str, str]   # dotted key -> the layer that set it (absent: dataclass default)


def resolve(task: str | None, model: str | None, config_file: str | None,
            overrides: Mapping[str, Any]) -> Resolved:
    """Compose exactly as `train` does (minus a launcher's environment) and say where each
    non-default value came from."""
    cfg = compose(task=task, model=model, config_file=config_file, overrides=overrides)
    file_values = load_yaml(config_file) if config_file else {}
    return Resolved(cfg, value_sources(cfg.data.task, cfg.model.name, file_values, overrides))


TRAIN_USAGE = """usage: seq2seq-es train --task T --model M [--config FILE] [--section.key VALUE ...]

Fine-tune model M on task T. Every key below can be set on the command line (--optim.lr 3e-5
or --optim.lr=3e-5) or in the --config YAML (sections as below). Precedence, lowest first:
the defaults shown < the task's defaults < the model's < the task's entries for that model <
--config < accelerate's config file (under accelerate launch) < the command line.
`seq2seq-es config --task T --model M` prints the resolved config as YAML that --config accepts.

options:
  --task T          task name (seq2seq-es list); also data.task
  --model M         model name (seq2seq-es list); also model.name
  --config FILE     YAML with sections model, data, optim, train, dist, gen
  -h, --help        this help; with --task and --model, the defaults that pair resolves to
"""


def train_help(resolved: Resolved | None = None) -> str:
    """The `train --help` text: every key with its type, default and meaning."""
    lines = [TRAIN_USAGE]
    if resolved is None:
        lines.append("config keys (defaults before a task and model apply theirs; --task T "
                     "--model M shows a pair's):")
        values = RunConfig().to_dict()
        sources: dict[str, str] = {}
    else:
        cfg = resolved.cfg
        lines.append(f"config keys (defaults resolved for task {cfg.data.task}, model "
                     f"{cfg.model.name}; 'from' names the layer that set a value):")
        values, sources = cfg.to_dict(), resolved.sources
    current = None
    for doc in key_docs():
        section, name = doc.key.split(".")
        if section != current:
            lines.append(f"\n{section}:")
            current = section
        origin = _origin(sources.get(doc.key))
        lines.append(f"  --{doc.key} ({doc.type}, default: "
                     f"{format_value(values[section][name])}{origin})")
        if doc.meaning:
            lines.append(textwrap.fill(doc.meaning, width=100, initial_indent=" " * 6,
                                       subsequent_indent=" " * 6))
    return "\n".join(lines) + "\n"


def _origin(source: str | None) -> str:
    if not source:
        return ""
    return f", {source}" if source.startswith(("follows", "lowered")) else f", from {source}"


def config_yaml(resolved: Resolved, command: str = "") -> str:
    """The resolved config as the YAML `--config` accepts; a comment names the layer that set
    each value that is not a dataclass default."""
    cfg = resolved.cfg
    out = ["# resolved by: seq2seq-es config " + command if command else
           "# resolved seq2seq-es config",
           "# feed it back with: seq2seq-es train --config FILE [--section.key VALUE ...]"]
    for section, values in cfg.to_dict().items():
        out.append(f"{section}:")
        for key, value in values.items():
            if isinstance(value, tuple):
                value = list(value)
            source = resolved.sources.get(f"{section}.{key}")
            if source == FOLLOWS:
                # null, not the number: fed back, a --data.max_target_length still moves it
                value, source = None, f"{FOLLOWS} ({cfg.gen.max_new_tokens})"
            if f"{section}.{key}" == "train.best_metric" and value is None:
                from .tasks import task_for
                source = (f"the task's main metric: {task_for(cfg.data).main_metric}"
                          if cfg.train.eval_generate else "loss (train.eval_generate false)")
            # One line per key (a list in flow style), so the source comment can follow it.
            text = yaml.safe_dump({key: value}, sort_keys=False, allow_unicode=True, width=10**6,
                                  default_flow_style=None if isinstance(value, list) else False
                                  ).rstrip("\n")
            if source and "\n" not in text:
                text += f"  # {source}"
            out.append("  " + text.replace("\n", "\n  "))
    return "\n".join(out) + "\n"
