"""Sandbox states: API strings that never change, and the legal transitions between them."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    KILLED = "killed"
    EXPIRED = "expired"
    FAILED = "failed"


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.RUNNING, State.KILLED, State.FAILED}),
    State.RUNNING: frozenset({State.KILLED, State.EXPIRED, State.FAILED}),
    State.KILLED: frozenset(),
    State.EXPIRED: frozenset(),
    State.FAILED: frozenset(),
}

LIVE = frozenset({State.STARTING, State.RUNNING})


class IllegalTransition(RuntimeError):
    pass


def check_transition(current: State, new: State) -> None:
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"sandbox cannot go from {current} to {new}")
