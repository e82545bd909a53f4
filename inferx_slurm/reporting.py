"""How library code tells people what it is doing: through a reporter it is given.

Only the command line prints; everything below it reports through a :class:`Reporter` and
leaves where the lines go (stderr, a CI log, a list a test reads) to the caller. A message is
complete as given (its own "warning:" or "skipping:" prefix included), so a printer prints it
as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol


class Reporter(Protocol):
    def info(self, message: str) -> None:
        """Progress: what is being done, what is being waited for."""

    def warning(self, message: str) -> None:
        """Something the user should know or act on; the run goes on."""


class Silent:
    """Drops every message: the default where a caller passes no reporter."""

    def info(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        pass


@dataclass
class Collector:
    """Keeps every message, in order, for a caller (or a test) to read afterwards."""

    infos: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def info(self, message: str) -> None:
        self.infos.append(message)

    def warning(self, message: str) -> None:
        self.warnings.append(message)


@dataclass
class Callbacks:
    """A reporter made of two line sinks (e.g. a printer for each stream)."""

    on_info: Callable[[str], None]
    on_warning: Callable[[str], None]

    def info(self, message: str) -> None:
        self.on_info(message)

    def warning(self, message: str) -> None:
        self.on_warning(message)


def given(reporter: Optional[Reporter]) -> Reporter:
    return reporter if reporter is not None else Silent()
