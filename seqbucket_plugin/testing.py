"""Contracts that every pipeline node of this project (and a user's own) must satisfy.

:func:`check_save_load_state` reproduces the checks of torchdata's own node test helper
(``test/nodes/utils.py: run_test_save_load_state``), with plain assertions so it runs
under pytest or anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchdata.nodes import BaseNode, Loader


def _default_equal(a: list[Any], b: list[Any]) -> bool:
    return a == b


def check_save_load_state(
    node: BaseNode,
    midpoint: int,
    equal: Callable[[list[Any], list[Any]], bool] = _default_equal,
) -> None:
    """Assert that ``node`` saves and restores its state exactly, as torchdata requires.

    The node is driven by a :class:`torchdata.nodes.Loader` over two epochs. Restoring the
    state taken after ``midpoint`` items must reproduce the rest of that epoch and then the
    following epoch; restoring the initial state must reproduce both epochs from the start;
    restoring an end-of-epoch state must give an empty epoch when the loader does not restart
    and the next epoch when it does.

    Args:
        node: the node under test (fresh; it will be reset).
        midpoint: how many items to take before saving mid-epoch; must be less than an epoch.
        equal: compares two lists of items (override for tensors or other non-``==`` types).

    Raises:
        AssertionError: naming the check that failed.
    """
    loader = Loader(node)
    initial_state = loader.state_dict()
    it = iter(loader)
    epoch0 = [next(it) for _ in range(midpoint)]
    mid_state_0 = loader.state_dict()
    epoch0.extend(it)
    end_state_0 = loader.state_dict()

    it = iter(loader)
    epoch1 = [next(it) for _ in range(midpoint)]
    mid_state_1 = loader.state_dict()
    epoch1.extend(it)

    loader.load_state_dict(mid_state_0)
    assert equal(list(loader), epoch0[midpoint:]), "restore at midpoint of epoch 0 differs"
    assert equal(list(loader), epoch1), "epoch 1 after a midpoint restore differs"

    loader.load_state_dict(mid_state_1)
    assert equal(list(loader), epoch1[midpoint:]), "restore at midpoint of epoch 1 differs"

    loader.load_state_dict(initial_state)
    assert equal(list(loader), epoch0), "restore of the initial state: epoch 0 differs"
    assert equal(list(loader), epoch1), "restore of the initial state: epoch 1 differs"

    no_restart = Loader(node, restart_on_stop_iteration=False)
    no_restart.load_state_dict(end_state_0)
    assert equal(list(no_restart), []), "restore at end of epoch 0 without restart is not empty"

    restart = Loader(node)
    restart.load_state_dict(end_state_0)
    assert equal(list(restart), epoch1), "restore at end of epoch 0 with restart differs from epoch 1"
