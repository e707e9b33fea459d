"""The edge's deadline queue: examples, and a hypothesis model check against a sorted list."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsched_edge.balancing.queue import DeadlineQueue, QueueFull


@dataclass(eq=False)
class Req:
    """A queued request stand-in: compared by identity, as the queue does."""

    label: str


def drain(queue: DeadlineQueue[Req]) -> list[str]:
    out = []
    while (item := queue.pop()) is not None:
        out.append(item.label)
    return out


def test_order_is_deadline_then_urgency_then_arrival() -> None:
    queue: DeadlineQueue[Req] = DeadlineQueue(limit=10)
    queue.push(Req("none-u0"), deadline=None, urgency=0)
    queue.push(Req("d2-u3-first"), deadline=2.0, urgency=3)
    queue.push(Req("d2-u1"), deadline=2.0, urgency=1)
    queue.push(Req("d1-u7"), deadline=1.0, urgency=7)
    queue.push(Req("d2-u3-second"), deadline=2.0, urgency=3)
    queue.push(Req("none-u0-later"), deadline=None, urgency=0)
    assert len(queue) == 6
    assert drain(queue) == [
        "d1-u7",
        "d2-u1",
        "d2-u3-first",
        "d2-u3-second",
        "none-u0",
        "none-u0-later",
    ]
    assert len(queue) == 0
    assert queue.pop() is None
    assert queue.peek() is None


def test_full_queue_raises_and_frees_up_after_pop() -> None:
    queue: DeadlineQueue[Req] = DeadlineQueue(limit=2)
    queue.push(Req("a"), deadline=1.0, urgency=3)
    queue.push(Req("b"), deadline=1.0, urgency=3)
    with pytest.raises(QueueFull, match="2"):
        queue.push(Req("c"), deadline=0.5, urgency=0)
    assert len(queue) == 2
    queue.pop()
    queue.push(Req("c"), deadline=0.5, urgency=0)
    assert drain(queue) == ["c", "b"]


def test_remove_is_by_identity_and_reports_absence() -> None:
    queue: DeadlineQueue[Req] = DeadlineQueue(limit=5)
    first, twin = Req("same"), Req("same")
    queue.push(first, deadline=1.0, urgency=3)
    queue.push(twin, deadline=2.0, urgency=3)
    assert queue.remove(first)
    assert not queue.remove(first)
    assert not queue.remove(Req("never queued"))
    assert len(queue) == 1
    assert queue.peek() is twin
    assert queue.next_deadline() == 2.0


def test_removed_item_can_be_queued_again_in_its_new_place() -> None:
    queue: DeadlineQueue[Req] = DeadlineQueue(limit=5)
    first, moved, other = Req("first"), Req("moved"), Req("other")
    queue.push(first, deadline=0.5, urgency=3)
    queue.push(moved, deadline=1.0, urgency=3)
    queue.push(other, deadline=2.0, urgency=3)
    queue.remove(moved)  # not the head: its entry stays in the heap, dead
    queue.push(moved, deadline=3.0, urgency=3)
    assert drain(queue) == ["first", "other", "moved"]  # the dead entry at 1.0 is never served


def test_pushing_a_queued_item_twice_is_an_error() -> None:
    queue: DeadlineQueue[Req] = DeadlineQueue(limit=5)
    item = Req("x")
    queue.push(item, deadline=1.0, urgency=3)
    with pytest.raises(ValueError, match="already queued"):
        queue.push(item, deadline=2.0, urgency=3)
    assert len(queue) == 1


def test_expire_returns_due_items_in_order_and_keeps_the_rest() -> None:
    queue: DeadlineQueue[Req] = DeadlineQueue(limit=10)
    for label, deadline, urgency in [
        ("late", 9.0, 0),
        ("due-b", 3.0, 5),
        ("open", None, 0),
        ("due-a", 3.0, 2),
        ("edge", 4.0, 0),
        ("early", 1.0, 7),
    ]:
        queue.push(Req(label), deadline=deadline, urgency=urgency)
    assert [r.label for r in queue.expire(4.0)] == ["early", "due-a", "due-b", "edge"]
    assert queue.next_deadline() == 9.0
    assert queue.expire(8.9) == []
    assert [r.label for r in queue.expire(math.inf)] == ["late"]  # no deadline never expires
    assert queue.next_deadline() is None
    assert len(queue) == 1


def test_next_deadline_skips_removed_head() -> None:
    queue: DeadlineQueue[Req] = DeadlineQueue(limit=10)
    head = Req("head")
    queue.push(head, deadline=1.0, urgency=0)
    queue.push(Req("next"), deadline=2.0, urgency=0)
    assert queue.next_deadline() == 1.0
    queue.remove(head)
    assert queue.next_deadline() == 2.0
    assert queue.expire(1.5) == []


@pytest.mark.parametrize(
    ("deadline", "urgency", "field"),
    [
        (math.nan, 3, "deadline"),
        (math.inf, 3, "deadline"),
        (1.0, 8, "urgency"),
        (1.0, -1, "urgency"),
    ],
)
def test_push_rejects_bad_arguments(deadline: float, urgency: int, field: str) -> None:
    queue: DeadlineQueue[Req] = DeadlineQueue(limit=5)
    with pytest.raises(ValueError, match=field):
        queue.push(Req("x"), deadline=deadline, urgency=urgency)
    assert len(queue) == 0


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="limit"):
        DeadlineQueue[Req](limit=0)


# --- model check ----------------------------------------------------------------------

# Few distinct deadlines and urgencies, so ties (and the arrival-order rule) are common.
deadlines = st.one_of(st.none(), st.integers(0, 5).map(float))
operations = st.lists(
    st.one_of(
        # again=True pushes the item most recently taken out, if any (identity reuse).
        # Listed twice so that the queue fills up often enough to reach its limit.
        *[st.tuples(st.just("push"), deadlines, st.integers(0, 7), st.booleans())] * 2,
        st.tuples(st.just("push-queued"), st.integers(0, 9)),
        st.tuples(st.just("pop")),
        # An index into the queue's current order; past the end: an item that is not queued.
        st.tuples(st.just("remove"), st.integers(0, 10)),
        st.tuples(st.just("expire"), st.one_of(st.integers(-1, 6).map(float), st.just(math.inf))),
    ),
    min_size=10,
    max_size=60,
)

Entry = tuple[float, int, int, Req]


@settings(max_examples=200, deadline=None)
@given(operations)
def test_matches_a_sorted_list_model(ops: list[tuple[object, ...]]) -> None:
    limit = 8
    queue: DeadlineQueue[Req] = DeadlineQueue(limit)
    model: list[Entry] = []  # kept sorted: the queue's order
    taken_out: list[Req] = []  # popped, removed or expired, most recent last
    arrivals = 0
    for op in ops:
        match op:
            case ("push", deadline, int(urgency), bool(again)):
                assert deadline is None or isinstance(deadline, float)
                item = taken_out.pop() if again and taken_out else Req(str(arrivals))
                if len(model) == limit:
                    with pytest.raises(QueueFull):
                        queue.push(item, deadline=deadline, urgency=urgency)
                    continue
                queue.push(item, deadline=deadline, urgency=urgency)
                arrivals += 1
                key = math.inf if deadline is None else deadline
                model.append((key, urgency, arrivals, item))
                model.sort(key=lambda e: e[:3])
            case ("push-queued", int(index)) if model:
                with pytest.raises(ValueError, match="already queued"):
                    queue.push(model[index % len(model)][3], deadline=0.0, urgency=0)
            case ("pop",):
                popped = queue.pop()
                assert popped is (model.pop(0)[3] if model else None)
                if popped is not None:
                    taken_out.append(popped)
            case ("remove", int(index)):
                if index < len(model):
                    removed = model.pop(index)[3]
                    assert queue.remove(removed) is True
                    taken_out.append(removed)
                else:
                    assert queue.remove(taken_out[-1] if taken_out else Req("new")) is False
            case ("expire", float(now)):
                due = [e[3] for e in model if e[0] <= now and e[0] != math.inf]
                assert queue.expire(now) == due
                model = model[len(due) :]
                taken_out.extend(due)
        assert len(queue) == len(model)
        assert queue.peek() is (model[0][3] if model else None)
        head_key = model[0][0] if model else math.inf
        assert queue.next_deadline() == (None if head_key == math.inf else head_key)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.booleans(), max_size=200))
def test_many_removals_keep_order_and_length(remove_flags: list[bool]) -> None:
    # Mostly-removed queues exercise the compaction of dead heap entries.
    queue: DeadlineQueue[Req] = DeadlineQueue(limit=500)
    items = [Req(str(i)) for i in range(len(remove_flags))]
    for i, item in enumerate(items):
        # Later items have earlier deadlines, so removals hit the head as well as the body.
        queue.push(item, deadline=float(len(items) - i), urgency=i % 8)
    for item, remove in zip(items, remove_flags, strict=True):
        if remove:
            assert queue.remove(item)
    kept = [item.label for item, remove in zip(items, remove_flags, strict=True) if not remove]
    assert len(queue) == len(kept)
    assert drain(queue) == kept[::-1]
