"""What every command needs: the effective configuration and, lazily, the catalog."""

from __future__ import annotations

from dataclasses import dataclass, field

import click

from catalog.store import Lakehouse
from lake.config import LakeConfig


@dataclass
class CliContext:
    config: LakeConfig
    _lake: Lakehouse | None = field(default=None, repr=False)

    @property
    def lake(self) -> Lakehouse:
        if self._lake is None:
            self._lake = Lakehouse.from_config(self.config)
        return self._lake


pass_ctx = click.make_pass_decorator(CliContext)
