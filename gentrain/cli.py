"""The ``gentrain`` entry point: a Hydra application that runs the task chosen by ``task=``."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from gentrain.errors import GentrainError

# absolute: a console script has no calling file for Hydra to resolve a relative path against
CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _app(cfg: DictConfig) -> None:
    from gentrain.build import build

    try:
        task = build(cfg.task, "task")
        task(cfg)
    except GentrainError as e:
        # one line, no traceback: the message names the fix
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(getattr(e, "exit_code", 2))


def main() -> None:
    _app()


if __name__ == "__main__":
    main()
