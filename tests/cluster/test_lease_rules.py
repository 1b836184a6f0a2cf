"""The ownership rules without a database: the even spread and the fence,
over an injected clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from drivebay.kernel.cluster.lease import Fence, LeaseGate, claim_quota, fair_share, surplus


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_fair_share_covers_every_resource() -> None:
    assert fair_share(10, 3) == 4
    assert fair_share(9, 3) == 3
    assert fair_share(0, 3) == 0
    assert fair_share(5, 0) == 0


def test_a_node_claims_up_to_its_share_and_no_more_than_is_free() -> None:
    assert claim_quota(resources=10, nodes=3, mine=0, claimable=10) == 4
    assert claim_quota(resources=10, nodes=3, mine=3, claimable=10) == 1
    assert claim_quota(resources=10, nodes=3, mine=5, claimable=10) == 0
    assert claim_quota(resources=10, nodes=3, mine=0, claimable=2) == 2


@given(st.integers(0, 500), st.integers(1, 12))
def test_nodes_claiming_in_turn_own_everything_evenly(resources: int, nodes: int) -> None:
    owned = [0] * nodes
    free = resources
    for node in range(nodes):
        took = claim_quota(resources, nodes, owned[node], free)
        owned[node] += took
        free -= took
    assert free == 0
    assert max(owned) - min(owned) <= fair_share(resources, nodes)
    assert max(owned) <= fair_share(resources, nodes)


def test_a_node_over_its_share_gives_up_the_excess() -> None:
    assert surplus(resources=9, nodes=3, mine=9) == 6
    assert surplus(resources=10, nodes=3, mine=4) == 0
    assert surplus(resources=9, nodes=1, mine=9) == 0


def test_a_node_never_renewed_is_fenced() -> None:
    fence = Fence(lease_s=15, grace_s=5, clock=Clock())
    assert not fence.may_dispatch()
    assert fence.remaining() == 0.0


def test_dispatch_stops_lease_minus_grace_after_the_renewal_was_sent() -> None:
    clock = Clock()
    fence = Fence(lease_s=15, grace_s=5, clock=clock)
    sent = fence.sending()
    clock.now += 2  # the database answers two seconds later
    fence.renewed(sent)
    assert fence.may_dispatch()
    assert fence.remaining() == 8.0
    clock.now = sent + 9.999
    assert fence.may_dispatch()
    clock.now = sent + 10
    assert not fence.may_dispatch()
    assert fence.remaining() == 0.0


def test_a_late_answer_to_an_older_renewal_does_not_shorten_the_fence() -> None:
    clock = Clock()
    fence = Fence(lease_s=15, grace_s=5, clock=clock)
    first = fence.sending()
    clock.now += 4
    second = fence.sending()
    fence.renewed(second)
    fence.renewed(first)
    clock.now = first + 12
    assert fence.may_dispatch()


def test_a_lost_lease_fences_at_once_until_the_next_renewal() -> None:
    clock = Clock()
    fence = Fence(lease_s=15, grace_s=5, clock=clock)
    fence.renewed(fence.sending())
    fence.fence()
    assert not fence.may_dispatch()
    fence.renewed(fence.sending())
    assert fence.may_dispatch()


def test_a_resource_lost_stays_shut_when_a_renewal_reopens_the_fence() -> None:
    clock = Clock()
    fence = Fence(lease_s=15, grace_s=5, clock=clock)
    owned = {"r1": 7, "r2": 8}
    gate, other = LeaseGate(fence, owned, "r1", 7), LeaseGate(fence, owned, "r2", 8)
    assert not gate.may_dispatch()  # never renewed
    fence.renewed(fence.sending())
    assert gate.may_dispatch() and other.may_dispatch()
    clock.now += 11  # paused past the fence: both shut
    assert not gate.may_dispatch() and not other.may_dispatch()
    del owned["r1"]  # the next round finds r1 taken by another node...
    fence.renewed(fence.sending())  # ...and the renewal reopens the node's fence
    assert not gate.may_dispatch() and other.may_dispatch()
    owned["r1"] = 9  # claimed again, under a new epoch: the old queue stays shut
    assert not gate.may_dispatch()
    assert LeaseGate(fence, owned, "r1", 9).may_dispatch()
