"""The simulator's churn joins and its lookup measurements: a node whose churn join fails leaves
again, but not while :meth:`SimNetwork.lookup` is measuring a lookup from it."""

from __future__ import annotations

from qadom.sim import SimNetwork


def test_a_failed_churn_join_does_not_take_the_measured_origin_away_halfway() -> None:
    net = SimNetwork(3, trace=True)
    nodes = net.build(20)
    net.loss = 1.0  # the join's first ping is lost
    net.churn(join=1, duration=0.0)
    while not net.joins:
        assert net.step()
    joiner = net.nodes[net.churn_log[-1][2]]
    assert net.trace is not None
    [(_, _, _, via, _)] = [e for e in net.trace if e[1] == "drop" and e[2] == joiner.address]
    net.loss = 0.0
    net.remove(net.nodes[via])  # and its resend too: the join fails within seconds
    other = next(n for n in nodes if n.address != via)
    net.run_call(net.call(joiner, joiner.ping, other.address))  # a contact of its own
    assert not net.joins[0].done
    net.latency = (0.2, 0.2)  # a lookup long enough for the join to fail while it runs
    report = net.lookup(joiner, 12345)
    join = net.joins[0]
    assert join.done and join.exception() is not None
    # The lookup ran to its end from a live origin; its origin left once it was over.
    assert report.ok and report.rounds > 0, report
    assert joiner not in net.live_nodes()
    assert net.churn_log[-1][1:] == ("leave", joiner.address)
