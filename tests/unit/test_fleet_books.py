"""The fleet's books under any sequence of requests, releases and host changes: never
over-allocated, never one GPU twice, first come first served per flavor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from domain import fleet as F

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FLAVORS = {
    "cpu": F.FlavorSpec(name="cpu", kind="cpu", cpu_per_unit=1, memory_gib_per_unit=4),
    "gpu": F.FlavorSpec(
        name="gpu", kind="gpu", cpu_per_unit=8, memory_gib_per_unit=45, gpu_model="any"
    ),
}
QUOTAS = F.Quotas(project_max_gpus=4)


def _host(name: str, gpus: int) -> F.HostInventory:
    return F.HostInventory(
        name=name,
        task_queue=f"q-{name}",
        cpus=8 * max(gpus, 1) + 4,
        memory_gib=45 * max(gpus, 1) + 16,
        gpu_model="sim" if gpus else None,
        gpu_ids=[str(i) for i in range(gpus)],
        flavors=["cpu", "gpu"] if gpus else ["cpu"],
    )


def _check(state: F.FleetState) -> None:
    for name, h in state.hosts.items():
        cpus, mem, _ = F.free(state, name)
        assert cpus >= -F.EPS and mem >= -F.EPS
        held = [g for a in state.allocations.values() if a.host == name for g in a.gpu_ids]
        assert len(held) == len(set(held)), "a GPU held twice"
        assert set(held) <= set(h.inventory.gpu_ids)
    queued = [r.notebook for r in state.queue]
    assert len(queued) == len(set(queued))
    assert not set(queued) & set(state.allocations)


op = st.one_of(
    st.tuples(
        st.just("request"),
        st.integers(0, 30),
        st.sampled_from(["cpu", "gpu"]),
        st.integers(1, 4),
        st.sampled_from(["a", "b", "c"]),
    ),
    st.tuples(st.just("release"), st.integers(0, 30)),
    st.tuples(st.just("down"), st.sampled_from(["h0", "h1", "h2"])),
    st.tuples(st.just("up"), st.sampled_from(["h0", "h1", "h2"])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(op, max_size=60))
def test_books_stay_consistent(ops) -> None:
    state = F.FleetState()
    now = T0
    for name, gpus in (("h0", 4), ("h1", 2), ("h2", 0)):
        F.register(state, _host(name, gpus), now)
    for o in ops:
        now += timedelta(seconds=1)
        if o[0] == "request":
            _, n, flavor, units, project = o
            before = [r.notebook for r in state.queue if r.flavor == flavor]
            d = F.request(
                state,
                F.CapacityRequest(notebook=f"n{n}", project=project, flavor=flavor, units=units),
                FLAVORS,
                QUOTAS,
                now,
            )
            if d.outcome == "granted" and f"n{n}" not in before:
                # granted at once only when nobody of its flavor waits
                assert not before or d.allocation.notebook in state.allocations
        elif o[0] == "release":
            F.release(state, f"n{o[1]}")
            order = [r.notebook for r in state.queue]
            granted = F.drain(state, FLAVORS, now)
            for flavor in FLAVORS:
                # whoever was granted came before everyone of its flavor still waiting
                got = [g.notebook for g in granted if g.flavor == flavor]
                still = [r.notebook for r in state.queue if r.flavor == flavor]
                if got and still:
                    assert max(order.index(n) for n in got) < min(order.index(n) for n in still)
        elif o[0] == "down":
            state.hosts[o[1]].last_seen = now - timedelta(seconds=100)
            F.expire(state, now, down_after_s=30)
        else:
            if not F.heartbeat(state, o[1], now):
                gpus = {"h0": 4, "h1": 2, "h2": 0}[o[1]]
                F.register(state, _host(o[1], gpus), now)
            F.drain(state, FLAVORS, now)
        _check(state)


def test_queue_moves_in_order_when_capacity_frees() -> None:
    state = F.FleetState()
    F.register(state, _host("h0", 2), T0)

    def ask(n: str, units: int = 1, project: str = "p") -> F.Decision:
        req = F.CapacityRequest(notebook=n, project=project, flavor="gpu", units=units)
        return F.request(state, req, FLAVORS, F.Quotas(project_max_gpus=10), T0)

    assert ask("a").outcome == "granted" and ask("b").outcome == "granted"
    assert state.allocations["a"].gpu_ids != state.allocations["b"].gpu_ids
    c = ask("c", 2)
    d = ask("d")
    assert (c.outcome, c.position, d.position) == ("queued", 1, 2)
    assert "2 GPUs" in c.waiting_for
    F.release(state, "a")
    assert F.drain(state, FLAVORS, T0) == []  # c needs 2; d must not overtake it
    F.release(state, "b")
    assert [a.notebook for a in F.drain(state, FLAVORS, T0)] == ["c"]
    assert F.position(state, "d") == (1, "gpu")


def test_refusals_name_the_limit() -> None:
    state = F.FleetState()
    F.register(state, _host("h0", 4), T0)
    req = F.CapacityRequest(notebook="x", project="p", flavor="gpu", units=5)
    d = F.request(state, req, FLAVORS, F.Quotas(project_max_gpus=8), T0)
    assert d.outcome == "refused" and "no host can ever fit 5 x gpu" in d.message
    assert d.code == "NO_CAPACITY"
    for i in range(2):
        req = F.CapacityRequest(notebook=f"g{i}", project="p", flavor="gpu", units=2)
        assert F.request(state, req, FLAVORS, QUOTAS, T0).outcome == "granted"
    req = F.CapacityRequest(notebook="g3", project="p", flavor="gpu", units=1)
    d = F.request(state, req, FLAVORS, QUOTAS, T0)
    assert d.outcome == "refused" and "at most 4 GPUs" in d.message
    assert d.code == "QUOTA_EXCEEDED"
