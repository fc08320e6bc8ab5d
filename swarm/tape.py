"""A tool tape: every tool call's outcome and budget decision, recorded and replayed by position.

With a model tape (kimi_swarm.backend.ReplayBackend) alone, a replay re-executes the tools, so it is exact only when
they are deterministic and no limit races (which of two agents got the last budgeted call depends
on timing). The tool tape closes both gaps: on replay each call gets the recorded outcome, and the
budget grants exactly the calls it granted then, so a live web-research run replays offline, exactly.
Calls are keyed by (agent id, model turn, position in the turn), all fixed by the model's replies.
Runs cut short by a deadline or a token budget depend on timing that is not taped; replaying one
stops with a ToolTapeMismatch or ReplayMismatch where it departs from the recording.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import IO

from pydantic import BaseModel


class ToolTapeMismatch(LookupError):
    """The replayed run made a tool call the recording does not have."""


class ToolOutcome(BaseModel):
    agent_id: int
    step: int
    position: int
    tool: str
    arguments: str
    executed: bool
    ok: bool
    output: str
    attempts: int = 0
    evidence: str | None = None
    source_url: str | None = None


class ToolTape:
    """Open with `ToolTape.record(path)` or `ToolTape.replay(path)` and pass to `Swarm(tool_tape=...)`;
    one tape holds one run. `Swarm.resume` makes its own with `ToolTape.resume`."""

    def __init__(self, path: str | Path, replaying: bool, outcomes: Iterable[ToolOutcome] | None = None) -> None:
        """`outcomes` given: a resumed run's tape, which replays them and lets every other call run live."""
        self.path = Path(path)
        self.replaying = replaying
        self.resuming = outcomes is not None
        self._outcomes: dict[tuple[int, int, int], ToolOutcome] = {}
        self._started = False
        self._file: IO[str] | None = None
        if outcomes is not None:
            for outcome in outcomes:
                self._add(outcome, "")
        elif replaying:
            with self.path.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, start=1):
                    if line.strip():
                        try:
                            outcome = ToolOutcome.model_validate_json(line)
                        except ValueError as error:
                            raise ValueError(f"{self.path}:{number}: not a tool outcome ({error})") from error
                        self._add(outcome, f":{number}")
        else:
            self._file = self.path.open("w", encoding="utf-8")

    def _add(self, outcome: ToolOutcome, line: str) -> None:
        key = (outcome.agent_id, outcome.step, outcome.position)
        if key in self._outcomes:
            raise ValueError(f"{self.path}{line}: a second outcome for agent {key[0]}, turn {key[1]}, call "
                             f"{key[2] + 1}: a tool tape holds one run")
        self._outcomes[key] = outcome

    @classmethod
    def record(cls, path: str | Path) -> ToolTape:
        return cls(path, replaying=False)

    @classmethod
    def replay(cls, path: str | Path) -> ToolTape:
        return cls(path, replaying=True)

    @classmethod
    def resume(cls, trace: str | Path, outcomes: Iterable[ToolOutcome]) -> ToolTape:
        """A crashed run's recorded outcomes (from its trace): those calls are replayed, calls past them run live."""
        return cls(trace, replaying=True, outcomes=outcomes)

    def begin_run(self) -> None:
        """Called by Swarm.run: a tape records or replays exactly one run."""
        if self._started:
            raise ValueError(f"the tool tape {self.path} was already used for a run; open a new tape for each run")
        self._started = True

    def write(self, outcome: ToolOutcome) -> None:
        if self._file is None:
            raise ValueError(f"{self.path} is open for replay, not for recording")
        self._file.write(outcome.model_dump_json() + "\n")
        self._file.flush()

    def take(self, agent_id: int, step: int, position: int, tool: str, arguments: str) -> ToolOutcome | None:
        """The recorded outcome of this call. A call the recording does not have is a ToolTapeMismatch, or, on a
        resumed run's tape, None: the crash came before it finished, so it runs live."""
        where = f"agent {agent_id}, turn {step}, call {position + 1}"
        outcome = self._outcomes.pop((agent_id, step, position), None)
        if outcome is None:
            if self.resuming:
                return None
            raise ToolTapeMismatch(f"{self.path}: no recorded tool call for {where} ({tool} {arguments})")
        if (outcome.tool, outcome.arguments) != (tool, arguments):
            raise ToolTapeMismatch(f"{self.path}: {where} called {tool} {arguments}, the recording has "
                                   f"{outcome.tool} {outcome.arguments}")
        return outcome

    @property
    def unused(self) -> int:
        """Recorded outcomes not taken yet (0 after replaying the same run)."""
        return len(self._outcomes)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> ToolTape:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def tool_tape_path(model_tape: str | Path) -> Path:
    """Where the CLI keeps the tool tape that goes with a model tape."""
    path = Path(model_tape)
    return path.with_name(path.name + ".tools.jsonl")
