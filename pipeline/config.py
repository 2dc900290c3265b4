"""Run configuration: YAML loading, `--set` overrides, error messages that name the key, saving, and what
`--resume` may change. The schema itself is `pipeline.schema`; its models are importable from here too.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.errors import ConfigError
from pipeline.runfolder import RunFolder
from pipeline.schema import (  # noqa: F401  (re-exported: `from pipeline.config import Config, DataConfig, ...`)
    PROJECT_ROOT,
    AugmentConfig,
    Config,
    CVConfig,
    DataConfig,
    ModelConfig,
    OutputConfig,
    PrivacyConfig,
    ReportConfig,
    StageConfig,
    TaskConfig,
    TrackingConfig,
    TrainConfig,
)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # package data: ships in the wheel


def resolve_config_path(name: str) -> Path:
    """`chest_xray`, `chest_xray.yaml` or a path; bare names resolve in configs/."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if cand.is_file():
            return cand
    known = ", ".join(sorted(c.stem for c in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"--config {name}: no such file (built-in configs: {known})")


def _parse_scalar(text: str):
    """`--set` values are YAML scalars/lists: 3 -> int, 1e-3 -> float, [a, b] -> list, null -> None."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


MAX_ERRORS = 10  # errors listed in one message; the rest are counted


def _models_in(ann) -> list[type[BaseModel]]:
    """The pydantic models an annotation allows (X, X | None, X | Y)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    return [m for a in get_args(ann) if get_origin(ann) is not list for m in _models_in(a)]


def _lists_in(ann) -> list:
    """The item annotations of the lists an annotation allows (list[X], list[X] | None)."""
    if get_origin(ann) is list:
        return [get_args(ann)[0] if get_args(ann) else object]
    return [item for a in get_args(ann) for item in _lists_in(a)]


def _field(ann, key: str):
    """The pydantic FieldInfo of `key` in the model(s) that `ann` allows, or None."""
    return next((m.model_fields[key] for m in _models_in(ann) if key in m.model_fields), None)


def _step(ann, part):
    """The annotation one key (str) or list index (int) below `ann`; None where the schema has no such place."""
    if isinstance(part, int) or (isinstance(part, str) and part.isdigit()):
        items = _lists_in(ann)
        return items[0] if items else None
    field = _field(ann, part)
    return field.annotation if field is not None else None


def _schema_at(parts) -> object | None:
    ann = Config
    for part in parts:
        ann = _step(ann, part)
        if ann is None:
            return None
    return ann


def _did_you_mean(loc: tuple) -> str:
    """' (did you mean a.b?)' for an unknown key at `loc`, else the section's valid keys."""
    *parent, key = loc
    fields = sorted({f for m in _models_in(_schema_at(parent)) for f in m.model_fields} - {"source"})
    if not fields:
        return ""
    close = difflib.get_close_matches(str(key), fields, n=3, cutoff=0.6)
    prefix = "".join(f"{p}." for p in parent)
    if close:
        return f" (did you mean {' or '.join(prefix + c for c in close)}?)"
    return f" (valid keys{' in ' + '.'.join(map(str, parent)) if parent else ''}: {', '.join(fields)})"


def _split_loc(loc: tuple) -> tuple[tuple, tuple]:
    """(key path, union tags): pydantic appends the member type it tried (`int`, `literal[...]`) to the loc of a
    value that fits no member of a union; those are not keys."""
    ann = Config
    for i, part in enumerate(loc):
        ann = _step(ann, part)
        if ann is None:
            return tuple(loc[:i]), tuple(loc[i:])
    return tuple(loc), ()


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Problem:
    """One error: its config location (key parts as strings) and message, before attribution to file/override."""

    def __init__(self, loc: tuple, msg: str, unknown: bool = False):
        self.loc = tuple(str(p) for p in loc)
        self.msg = msg
        self.unknown = unknown  # an unknown key

    @property
    def key(self) -> str:
        return ".".join(self.loc)


def _problems(err: ValidationError) -> list[_Problem]:
    out: list[_Problem] = []
    unions: dict[tuple, tuple[_Problem, list[str], str]] = {}  # path -> (problem, alternatives, got)
    for e in err.errors():
        msg = " ".join(e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ").split())
        if e["type"] == "extra_forbidden":
            out.append(_Problem(e["loc"], f"unknown key{_did_you_mean(e['loc'])}", unknown=True))
            continue
        if e["type"] == "missing":
            out.append(_Problem(e["loc"], "required key is missing"))
            continue
        got = ""
        if e["type"] not in ("value_error", "assertion_error") and isinstance(e.get("input"), (str, int, float)):
            got = f" (got {_short(e['input'])})"
        path, tags = _split_loc(e["loc"])
        if not tags:
            out.append(_Problem(path, msg + got))
            continue
        # a value that fits no member of a union: pydantic reports each member; list them as one error
        if path not in unions:
            unions[path] = (_Problem(path, ""), [], got)
            out.append(unions[path][0])
        unions[path][1].append(msg)
    for problem, alternatives, got in unions.values():
        problem.msg = " / ".join(dict.fromkeys(alternatives)) + got
    return out


def _join(parts: list[str]) -> str:
    more = f" (and {len(parts) - MAX_ERRORS} more)" if len(parts) > MAX_ERRORS else ""
    return "; ".join(parts[:MAX_ERRORS]) + more


def _default_value(parts: list[str]):
    """The schema default at a dotted location, as plain data (None where there is none)."""
    *parent, key = parts
    field = _field(_schema_at(parent), key)
    if field is None or field.is_required():
        return None
    value = field.get_default(call_default_factory=True)
    if isinstance(value, list):
        return [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _index(node: list, part: str, where: str) -> int:
    if not part.isdigit():
        raise ConfigError(f"'{part}' is not a list index ({where} is a list of {len(node)} items; "
                          f"use {where}.0{f' .. {where}.{len(node) - 1}' if len(node) > 1 else ''})")
    if int(part) >= len(node):
        raise ConfigError(f"index {part} is out of range ({where} has {len(node)} item{'s' * (len(node) != 1)})")
    return int(part)


def apply_override(raw: dict, assignment: str) -> list[str]:
    """Set one `KEY=VALUE` in the raw YAML data; return the key's parts. List items are addressed by index
    (train.stages.0.lr); a list the YAML leaves at its default is filled in from the schema first."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected KEY=VALUE, e.g. train.batch_size=16")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment}: '{key.strip()}' is not a dotted key such as train.batch_size")
    try:
        node = raw
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[:i + 1])
            if isinstance(node, list):
                node = node[_index(node, part, ".".join(parts[:i]))]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    default = _default_value(parts[:i + 1])
                    node[part] = default if isinstance(default, (list, dict)) else {}
                node = node[part]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"{where} is a value ({_short(node)}), not a section or list; "
                                  f"set it with --set {where}=VALUE")
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, ".".join(parts[:-1]))] = _parse_scalar(value)
        else:
            node[last] = _parse_scalar(value)
    except ConfigError as exc:
        raise ConfigError(f"--set {assignment}: {exc}") from None
    return parts


def _attribute(problem: _Problem, overrides: list[tuple[tuple, str, int]]) -> tuple[int, str] | None:
    """(override's position, the error as caused by that override), or None. An override causes an error at or below its key (the most
    specific override wins, the last on ties), and one above it that is an unknown section it created or a
    section validator's message naming the key."""
    best = None
    for override in overrides:
        key = override[0]
        if problem.loc[:len(key)] == key and (best is None or len(key) >= len(best[0])):
            best = override
    if best is not None:
        key, assignment, pos = best
        where = f"{problem.key}: " if problem.loc != key else ""
        return pos, f"--set {assignment}: {where}{problem.msg}"
    for key, assignment, pos in reversed(overrides):
        if key[:len(problem.loc)] == problem.loc and len(key) > len(problem.loc):
            named = ".".join(key[len(problem.loc):]) + ": "
            if problem.msg.startswith(named):
                return pos, f"--set {assignment}: {problem.msg.removeprefix(named)}"
            if problem.unknown:
                return pos, f"--set {assignment}: {problem.key}: {problem.msg}"
    return None


def load_config(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    path = resolve_config_path(name)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    set_keys: list[tuple[tuple, str, int]] = []  # (key parts, assignment, position on the command line)
    override_errors: list[tuple[int, str]] = []
    for pos, assignment in enumerate(overrides):
        try:
            set_keys.append((tuple(apply_override(raw, assignment)), assignment.strip(), pos))
        except ConfigError as exc:
            override_errors.append((pos, str(exc)))
    raw.setdefault("source", str(path.resolve()))
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        from_file, from_overrides = [], []
        for problem in _problems(err):
            line = _attribute(problem, set_keys)
            if line is not None:
                from_overrides.append(line)
            else:
                from_file.append(f"{problem.key}: {problem.msg}" if problem.key else problem.msg)
        file_part = [f"{path}: {from_file[0]}", *from_file[1:]] if from_file else []
        # errors of overrides in command-line order (stable: one override's errors keep the schema's order)
        by_override = [line for _, line in sorted(override_errors + from_overrides, key=lambda t: t[0])]
        raise ConfigError(_join(by_override + file_part)) from None
    if override_errors:
        raise ConfigError(_join([line for _, line in override_errors]))
    return cfg


def config_text(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_config(cfg: Config, path: Path) -> None:
    RunFolder.write_text(path, config_text(cfg))


# settings that change only the console, not the results: fold processes may differ in them
_CONSOLE_ONLY = {("source",), ("train", "progress")}


def _without_console(d: dict, prefix=()) -> dict:
    return {k: (_without_console(v, prefix + (k,)) if isinstance(v, dict) else v) for k, v in d.items()
            if prefix + (k,) not in _CONSOLE_ONLY}


def _first_difference(a, b, prefix="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
    return f"{prefix.rstrip('.')} ({b!r} there, {a!r} here)"


def publish_config(cfg: Config, path: Path) -> None:
    """config.yaml of a run that several fold processes share: the first writes it, the rest must match it."""
    existing = RunFolder.publish_once(path, config_text(cfg))
    if existing is None:
        return
    mine, theirs = _without_console(cfg.model_dump(mode="json")), _without_console(yaml.safe_load(existing) or {})
    if mine != theirs:
        raise ConfigError(f"--output-dir {path.parent}: its config.yaml differs from this run's at "
                          f"{_first_difference(mine, theirs)}; every --fold process of a run needs the same config")


# what `--resume RUN --set ...` may change: how the run is shown, reported and where it runs, never what
# trained the finished folds (a prefix covers its whole section); everything else is refused
RESUME_MAY_CHANGE = ("train.progress", "train.log_every", "train.device", "data.num_workers", "report.",
                     "tracking.", "output.", "source")


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {k: v for key, val in node.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    if isinstance(node, list) and node and isinstance(node[0], dict):
        return {k: v for i, val in enumerate(node) for k, v in _flat(val, f"{prefix}{i}.").items()}
    return {prefix[:-1]: node}


def resume_changes(saved: Config, new: Config) -> list[str]:
    """Keys whose value differs between a run's saved config and the one --resume would use, leaving out
    RESUME_MAY_CHANGE."""
    a, b = _flat(saved.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return [k for k in changed if not any(k == f or (f.endswith(".") and k.startswith(f)) for f in RESUME_MAY_CHANGE)]


def resume_may_change_text() -> str:
    """RESUME_MAY_CHANGE as a reader-facing list (error messages)."""
    return ", ".join(f + "*" if f.endswith(".") else f for f in RESUME_MAY_CHANGE)
