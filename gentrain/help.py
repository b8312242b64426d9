"""``gentrain --help``: usage, the config groups and their options, every key of the composed config with its meaning
(one line each, from the YAML comments of the files that define it), and examples.

Fast: Hydra composes the config; no torch import.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

from gentrain.config import CONFIG_DIR

#: Meanings of Hydra's reserved keys, wherever they appear.
RESERVED = {
    "_target_": "what Hydra builds for this section: the implementing class or function",
    "_partial_": "built as a partial: gentrain passes the remaining arguments at run time",
    "_recursive_": "whether Hydra also builds the nested sections",
    "_convert_": "how Hydra passes nested config values (none | partial | object | all)",
    "_args_": "positional arguments of _target_",
}

#: Meanings of torch.optim arguments under ``<section>.optimizer.<phase>.<arg>`` ({phase}: the phase's name).
OPTIMIZER_ARGS = {
    "_target_": "optimizer class of phase {phase}",
    "_partial_": "built later, with phase {phase}'s parameters",
    "lr": "learning rate of phase {phase}",
    "betas": "Adam's decay rates of the running mean and running square of the gradient (phase {phase})",
    "eps": "term added to the optimizer's denominator for numerical stability (phase {phase})",
    "weight_decay": "weight decay (L2 penalty) of phase {phase}",
    "momentum": "momentum factor of phase {phase}",
    "alpha": "RMSprop's smoothing constant of the running square (phase {phase})",
    "amsgrad": "the AMSGrad variant of Adam (phase {phase})",
    "nesterov": "Nesterov momentum (phase {phase})",
    "initial_accumulator_value": "Adagrad's starting sum of squared gradients (phase {phase})",
    "lr_decay": "Adagrad's learning-rate decay (phase {phase})",
}

_BLOCK_SCALAR = re.compile(r"^[|>][+-]?\d*$")
_KEY = re.compile(r"^(\s*)(['\"]?)([^'\"\s:#][^:#]*?)\2\s*:(?:\s+(.*)|)$")

#: Groups that are not sections of the composed config (their files write elsewhere, or globally).
_GLOBAL_GROUPS = ("task", "experiment", "hparams_search")


# ---- reading the YAML comments -----------------------------------------------------------------

def _split_comment(text: str) -> tuple[str, str | None]:
    """``value  # comment`` -> (value, comment); a ``#`` inside quotes or without a space before it is not one."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip(), text[i + 1 :].strip()
    return text.rstrip(), None


def parse_comments(text: str) -> tuple[str, dict[str, str], list[str]]:
    """A YAML file's header (its leading comment block), its keys' meanings by dotted path, and its string
    ``defaults:`` entries.

    A key's meaning is its trailing ``# comment`` (with the comment lines indented below it that continue it),
    else the comment lines directly above it. The header (comments before the first key) describes the file,
    not its first key. Keys inside flow mappings (``{a: 1}``) and list items get none."""
    lines = text.splitlines()
    header: list[str] = []
    meanings: dict[str, str] = {}
    defaults: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the open mappings
    above: list[str] = []
    last: tuple[str, int] | None = None  # the previous key (path, indent) when its comment may continue
    block_indent: int | None = None  # inside a block scalar (|, >) of a key at this indent
    in_defaults: int | None = None
    seen_key = False
    for raw in lines:
        stripped = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        if block_indent is not None:
            if not stripped or indent > block_indent:
                continue
            block_indent = None
        if not stripped:
            above, last = [], None
            continue
        if stripped.startswith("#"):
            comment = stripped.lstrip("#").strip()
            if comment.startswith("@package"):
                continue
            if not seen_key:
                header.append(comment)
            elif last is not None and indent > last[1]:
                meanings[last[0]] = f"{meanings[last[0]]} {comment}".strip()  # continues the trailing comment
            else:
                above.append(comment)
                last = None
            continue
        if stripped.startswith("-"):
            if in_defaults is not None and indent >= in_defaults:
                item = _split_comment(stripped[1:].strip())[0]
                if item and ":" not in item:
                    defaults.append(item)
            above, last = [], None
            continue
        match = _KEY.match(_split_comment(raw)[0] if "#" in raw else raw)
        if not match:
            above, last = [], None
            continue
        seen_key = True
        key_indent, key = len(match.group(1)), match.group(3).strip()
        value, comment = _split_comment(raw[raw.index(":", len(match.group(1)) + len(key)) + 1 :].strip())
        while stack and stack[-1][0] >= key_indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        in_defaults = key_indent if path == "defaults" else (in_defaults if in_defaults is not None and key_indent > in_defaults else None)
        if comment:
            meanings[path] = comment
            last = (path, key_indent)
        elif above:
            meanings[path] = " ".join(above)
            last = None
        else:
            last = None
        above = []
        if not value:
            stack.append((key_indent, key))
        elif _BLOCK_SCALAR.match(value):
            block_indent = key_indent
    return " ".join(header), meanings, defaults


def _package(text: str, group: str | None) -> str:
    """Where a file's keys go: its ``# @package`` line, else its group (the root for config.yaml)."""
    for line in text.splitlines():
        m = re.match(r"^#\s*@package\s+(\S+)", line.strip())
        if m:
            return "" if m.group(1) == "_global_" else m.group(1)
        if line.strip() and not line.strip().startswith("#"):
            break
    return group.replace("/", ".") if group else ""


class Meanings:
    """Key meanings gathered from the YAML files of the chosen options, first file first."""

    def __init__(self, config_dir: Path = CONFIG_DIR) -> None:
        self.config_dir = config_dir
        self.meanings: dict[str, str] = {}
        self.headers: dict[str, str] = {}

    def add_file(self, path: Path, group: str | None, seen: set[Path] | None = None) -> None:
        seen = set() if seen is None else seen
        if path in seen or not path.is_file():
            return
        seen.add(path)
        text = path.read_text()
        header, meanings, defaults = parse_comments(text)
        package = _package(text, group)
        prefix = f"{package}." if package else ""
        for key, meaning in meanings.items():
            if key == "defaults" or key.startswith("defaults.") or (not package and key.split(".")[0] == "hydra"):
                continue
            self.meanings.setdefault(prefix + key, meaning)
        if group and header:
            self.headers.setdefault(group, header)
        for entry in defaults:  # the files an option extends (eval/standard.yaml: - default)
            name = entry.split("@")[0].strip()
            if name in ("_self_",) or name.startswith("override ") or "optional " in name:
                continue
            file = self.config_dir / (name.lstrip("/") if name.startswith("/") else f"{group}/{name}" if group else name)
            self.add_file(file.with_suffix(".yaml") if file.suffix != ".yaml" else file, group if not name.startswith("/") else name.lstrip("/").rsplit("/", 1)[0], seen)

    def meaning(self, path: str) -> str:
        if path in self.meanings:
            return self.meanings[path]
        parts = path.split(".")
        if len(parts) >= 3 and parts[-3] == "optimizer" and parts[-1] in OPTIMIZER_ARGS:
            return OPTIMIZER_ARGS[parts[-1]].format(phase=parts[-2])
        return RESERVED.get(parts[-1], "")


def chosen_options(cfg: Any) -> dict[str, Any]:
    """The option of each config group in a composed config: Hydra's record of the choices, with the list-valued
    ones (``logger=[tensorboard,csv,mlflow,wandb]``, which that record leaves out) from the overrides as lists."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    choices = dict(OmegaConf.to_container(cfg.hydra.runtime.choices))
    try:
        parsed = OverridesParser.create().parse_overrides(list(cfg.hydra.overrides.task))
    except Exception:  # noqa: BLE001 - composition has accepted them; nothing to add if the grammar differs
        return choices
    for o in parsed:
        value = o.value()
        if (o.key_or_group in choices or (CONFIG_DIR / o.key_or_group).is_dir()) and isinstance(value, list) and all(isinstance(v, str) for v in value):
            choices[o.key_or_group] = list(value)
    return choices


def _option_text(chosen: Any) -> str:
    """A group's choice as typed on the command line: ``dcgan``, ``[tensorboard,csv]``."""
    return f"[{','.join(map(str, chosen))}]" if isinstance(chosen, (list, tuple)) else str(chosen)


def gather_meanings(choices: dict[str, Any], config_dir: Path = CONFIG_DIR) -> Meanings:
    """Meanings from the chosen option of each group (and the files it extends), then config.yaml, then the chosen
    experiment and hyperparameter search (which describe their own values rather than the keys)."""
    m = Meanings(config_dir)
    groups = [g for g in choices if "/" not in g and g not in ("experiment", "hparams_search")]
    for group in groups:
        chosen = choices[group]
        for option in chosen if isinstance(chosen, (list, tuple)) else [chosen] if chosen is not None else []:
            m.add_file(config_dir / group / f"{option}.yaml", group)  # each option of a list (logger=[tensorboard,csv])
    m.add_file(config_dir / "config.yaml", None)
    for group in ("experiment", "hparams_search"):
        if choices.get(group) is not None:
            m.add_file(config_dir / group / f"{choices[group]}.yaml", group)
    return m


# ---- the composed config -------------------------------------------------------------------

def show(value: Any) -> str:
    """A value as one would type it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return str(value)


def leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf (path, value) of a plain container (dicts recursed, lists and empty dicts are leaves)."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from leaves(value, path + ".")
        else:
            yield path, value


def _options(config_dir: Path) -> dict[str, list[str]]:
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(config_dir.iterdir())
        if d.is_dir() and d.name != "hydra" and any(d.glob("*.yaml"))
    }


def _first_values(overrides: list[str]) -> list[str]:
    """A sweep's overrides (``model=vae,dcgan``) as the first job's (``model=vae``): the help shows one config."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.core.override_parser.types import ValueType

        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # noqa: BLE001 - composition reports the syntax error
        return overrides
    out = []
    for o in parsed:
        if o.is_sweep_override():
            if o.value_type in (ValueType.SIMPLE_CHOICE_SWEEP, ValueType.CHOICE_SWEEP, ValueType.RANGE_SWEEP):
                first = next(iter(o.sweep_string_iterator()), None)
                if first is not None:
                    out.append(f"{o.get_key_element()}={first}")
            continue  # intervals (an optimising sweeper's search space): the configured value is shown
        out.append(o.input_line)
    return out


def _wrap(words: list[str], indent: int, width: int) -> list[str]:
    lines, line = [], ""
    for w in words:
        if line and indent + len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    return lines + [line] if line else lines


def render(overrides: list[str], width: int | None = None, config_dir: Path = CONFIG_DIR) -> str:
    """The help text for the config ``overrides`` compose (Hydra's and OmegaConf's errors propagate)."""
    from omegaconf import OmegaConf

    from gentrain.config import compose_app_config

    width = width or shutil.get_terminal_size((100, 24)).columns
    overrides = _first_values(overrides)
    cfg = compose_app_config(overrides)
    choices = chosen_options(cfg)
    help_cfg = OmegaConf.to_container(cfg.hydra.help, resolve=False)
    plain = OmegaConf.to_container(cfg, resolve=False)
    del plain["hydra"]
    meanings = gather_meanings(choices, config_dir)
    out: list[str] = []

    out += [str(help_cfg.get("header") or "gentrain"), ""]
    if overrides:
        out += [f"The config of: {' '.join(overrides)}", ""]

    out.append("Config groups (group=option); the chosen option first, then every option:")
    options = _options(config_dir)
    name_width = max(len(g) for g in options) + 1
    for group, opts in options.items():
        chosen = choices.get(group)
        shown = "(none)" if chosen is None else _option_text(chosen)
        head = f"  {group + ':':<{name_width}} {shown:<15} "
        wrapped = _wrap(opts, len(head), width)
        out.append(head + (wrapped[0] if wrapped else ""))
        out += [" " * len(head) + w for w in wrapped[1:]]
    out.append("")

    out.append("Keys (key=value to change one; `# meaning`), by section:")
    sections: dict[str, list[tuple[str, Any]]] = {"": []}
    for key, value in plain.items():
        if isinstance(value, dict) and value:
            sections[key] = list(leaves(value, key + "."))
        else:
            sections[""].append((key, value))
    rows = [(f"{path} = {show(value)}", meanings.meaning(path)) for items in sections.values() for path, value in items]
    column = min(max((len(r[0]) for r in rows), default=0), 44)
    for section, items in sections.items():
        if not items:
            continue
        if section:
            chosen = choices.get(section)
            about = meanings.headers.get(section, "") if chosen is not None else ""
            title = f"{section} ({section}={_option_text(chosen)})" if chosen is not None else section
            first = re.split(r"(?<=\.)\s+(?=[A-Z(])", about, maxsplit=1)[0] if about else ""
            line = f"{title}: {first}" if first else title
            out.append("\n" + (line if len(line) <= width else line[: max(width - 1, len(title))] + "…"))
        else:
            out.append("\ntop level")
        for path, value in items:
            text = f"{path} = {show(value)}"
            meaning = meanings.meaning(path)
            out.append(f"  {text:<{column}}  # {meaning}" if meaning else f"  {text}")
    out += ["", str(help_cfg.get("footer") or "")]
    return "\n".join(out).rstrip() + "\n"


def print_help(overrides: list[str]) -> None:
    sys.stdout.write(render(overrides))
    sys.stdout.flush()


def version_line() -> str:
    """``gentrain 0.1.0 (torch 2.x, hydra-core 1.3.x, Python 3.x.y)``: versions read without importing torch."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import gentrain

    parts = []
    for dist in ("torch", "hydra-core"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} not installed")
    parts.append(f"Python {platform.python_version()}")
    return f"gentrain {gentrain.__version__} ({', '.join(parts)})"
