"""The ``gentrain`` entry point: a Hydra application that runs the task chosen by ``task=``."""

from __future__ import annotations

import re
import sys

import hydra
from omegaconf import DictConfig

from gentrain.config import CONFIG_DIR, compose_app_config
from gentrain.errors import GentrainError


# absolute: a console script has no calling file for Hydra to resolve a relative path against
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def _app(cfg: DictConfig) -> None:
    from gentrain.build import build

    try:
        task = build(cfg.task, "task")
        task(cfg)
    except GentrainError as e:
        # one line, no traceback: the message names the fix
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(getattr(e, "exit_code", 2))


_SIMPLE_VALUE = re.compile(r"^[\w.\-/:]+$")


def _runs_to_check(argv: list[str]) -> list[list[str]] | None:
    """The override lists to compose before Hydra starts: the run, or for ``-m`` every option of every
    simple sweep (the others at their first value). None where Hydra should answer alone (help, --info,
    another config, sweeps of ranges or globs)."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion or args.experimental_rerun:
        return None
    if args.config_path or args.config_name or args.config_dir:
        return None
    overrides = OverridesParser.create().parse_overrides(args.overrides)  # a syntax error raises here
    if not args.multirun:
        return [list(args.overrides)]
    choices: list[list[str]] = []
    for o in overrides:
        if not o.is_sweep_override():
            choices.append([o.input_line])
            continue
        listed = (ValueType.SIMPLE_CHOICE_SWEEP, ValueType.CHOICE_SWEEP, ValueType.RANGE_SWEEP)
        values = list(o.sweep_string_iterator()) if o.value_type in listed else []
        if not values or not all(_SIMPLE_VALUE.match(v) for v in values):
            return None
        choices.append([f"{o.get_key_element()}={v}" for v in values])
    first = [c[0] for c in choices]
    runs = [first] + [first[:i] + [v] + first[i + 1 :] for i, c in enumerate(choices) for v in c[1:]]
    return runs


def _one_line(message: str) -> str:
    """Hydra's multi-line composition errors as one line (the options it lists kept, its search path dropped)."""
    lines = [line.strip() for line in message.strip().splitlines()]
    if "Config search path:" in lines:
        lines = lines[: lines.index("Config search path:")]
    head, rest = lines[0].rstrip("."), [line for line in lines[1:] if line]
    missing = re.search(r"Could not find '([\w/]+)/([^']*)'", head)
    if missing and rest and rest[0].startswith("Available options"):
        group, option = missing.groups()
        return f"unknown {group} {option!r}; choose one of: {', '.join(rest[1:])} (e.g. {group}={rest[1]})"
    append = next((line.split()[-1] for line in rest if line.startswith("To append to your config use")), None)
    if head.startswith("Could not override") and append:
        key = head.removeprefix("Could not override ").strip("'")
        return f"{key} is not an option here (check its spelling; gentrain --cfg job lists the options); to add a new key use {append}"
    return "; ".join([head, *(line.replace("\\'", "'") for line in rest[:3])])


def _precheck(argv: list[str]) -> None:
    """Compose the config(s) the way Hydra will and refuse bad overrides with one line and exit 2,
    before Hydra prints its multi-line report."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        for overrides in _runs_to_check(argv) or []:
            compose_app_config(overrides)
    except (HydraException, OmegaConfBaseException) as e:
        print(f"error: {_one_line(str(e))}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        GlobalHydra.instance().clear()


def main() -> None:
    _precheck(sys.argv[1:])
    _app()


if __name__ == "__main__":
    main()
