"""What a drained node says in its own log while it hands its resources
over (``drivebayctl drain-node``): one line when it sees it is draining, one
per round in which it gave resources up, one when it holds nothing any
more, and one when it sees it was made live again. Nothing per resource,
nothing in a round that changed nothing. docs/cluster.md, "Draining a
node"."""

from __future__ import annotations

import logging

log = logging.getLogger("drivebay.cluster")


class DrainLog:
    """One node's drain as its rounds see it; ``ClusterNode._rebalance``
    tells it each round's outcome."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._draining = False  # as the last round found
        self._drained = False  # said so

    def round(self, draining: bool, handed: int, held: int) -> None:
        """After a round: ``draining`` as the database says, ``handed``
        leases ended in this round for the drain, ``held`` still held."""
        if not draining:
            if self._draining:
                log.info(
                    "cluster: node %s is live again (drain undone): it claims its share again",
                    self.node_id,
                )
            self._draining = self._drained = False
            return
        if not self._draining:
            self._draining = True
            if handed + held:
                log.info(
                    "cluster: node %s is draining: it claims nothing more and hands over "
                    "its %d resources, each once its queue is idle",
                    self.node_id,
                    handed + held,
                )
        if handed:
            log.info(
                "cluster: draining: handed over %d resources, "
                "%d still held (their queues are busy)",
                handed,
                held,
            )
        if held:
            self._drained = False
        elif not self._drained:
            self._drained = True
            log.info(
                "cluster: node %s drained: holds no resource; "
                "'drivebayctl drain-node %s --undo' makes it claim again",
                self.node_id,
                self.node_id,
            )
