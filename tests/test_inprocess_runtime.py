"""The in-process runtime is a Flower runtime: a plain Flower App runs on it unchanged."""

from __future__ import annotations

import inspect
import time

import flwr
import flwr.superlink.grid.http_grid as http_grid
import flwr.supernode.runtime.run_clientapp as run_clientapp
import flwr.supernode.start_client_internal as supernode
import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

from fedsim.runtime import compat
from fedsim.runtime.inprocess import InProcessGrid

from . import flower_fixture_app as fixture


def run_fixture(num_nodes: int, rounds: int, **extra) -> Context:
    grid = InProcessGrid(fixture.client, num_nodes)
    ctx = Context(
        run_id=grid.run.run_id,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={"num-nodes": num_nodes, "rounds": rounds, **extra},
    )
    for node in grid.get_node_ids():  # the ClientApp's run config, as a SuperNode has it
        grid.contexts[node].run_config.update(extra)
    fixture.server(grid=grid, context=ctx)
    return ctx


def test_plain_flower_app_runs_unchanged_and_matches_closed_form():
    n, rounds = 4, 3
    ctx = run_fixture(n, rounds)
    weights = np.arange(1, n + 1, dtype=float)
    step = (weights**2).sum() / weights.sum()  # FedAvg of w + (p+1) weighted by (p+1)
    np.testing.assert_allclose(ctx.state["final"]["w"].numpy(), np.full(3, rounds * step))
    # every node kept its own Context.state across rounds
    assert ctx.state["train"]["calls"] == pytest.approx(rounds)


def test_a_raising_client_becomes_a_flower_error_reply():
    grid = InProcessGrid(fixture.client, 3)
    for node in grid.get_node_ids():  # contexts are made when a node is first reached
        grid.contexts[node].run_config["fail-partition"] = 1
    msgs = [
        Message(
            RecordDict({"arrays": fixture.ArrayRecord({"w": fixture.Array(np.zeros(2))})}),
            dst_node_id=nid,
            message_type="train",
        )
        for nid in grid.get_node_ids()
    ]
    replies = list(grid.send_and_receive(msgs))
    errors = [r for r in replies if r.has_error()]
    assert len(replies) == 3 and len(errors) == 1
    assert errors[0].error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "partition 1 fails on purpose" in errors[0].error.reason
    assert all(r.metadata.reply_to_message_id for r in replies)


def test_failures_do_not_stop_flower_fedavg():
    ctx = run_fixture(3, 2, **{"fail-partition": 2})
    weights = np.array([1.0, 2.0])  # partition 2 never contributes
    np.testing.assert_allclose(
        ctx.state["final"]["w"].numpy(), np.full(3, 2 * (weights**2).sum() / weights.sum())
    )


def test_flower_internals_we_rely_on_are_still_there():
    """Fails loudly on a Flower upgrade that moves what fedsim.runtime.compat touches."""
    major, minor = (int(v) for v in flwr.__version__.split(".")[:2])
    assert (major, minor) in compat.SUPPORTED, "re-check fedsim/runtime/compat.py for this Flower"
    compat.set_server_identity(1234)
    msg = Message(RecordDict(), dst_node_id=7, message_type="train")
    assert msg.metadata.run_id == 1234
    msg_id = compat.assign_message_id(msg)
    assert msg.metadata.message_id == msg_id
    from flwr.simulation.run_simulation import _run_simulation

    assert "server_app_context" in inspect.signature(_run_simulation).parameters


def test_short_object_pulls_ask_again_within_milliseconds():
    """Every path that pulls a message's objects (the deployment Grid, the SuperNode, the
    ClientApp runtime) asks again for one not stored yet within milliseconds: four misses cost
    Flower's own retry 1 + 2 + 4 + 8 s (+-20%), here well under a second; the message arrives
    whole."""
    compat.short_object_pulls()
    compat.set_server_identity(1)
    content = RecordDict(
        {"arrays": ArrayRecord([np.arange(5.0)]), "cfg": ConfigRecord({"lr": 0.1})}
    )
    msg = Message(content, dst_node_id=3, message_type="train")
    objects = {i: o.deflate() for i, o in get_all_nested_objects(msg).items()}
    tree = get_object_tree(msg)

    def flaky(misses: int):
        calls = {i: 0 for i in objects}

        def pull(object_id: str) -> bytes:
            calls[object_id] += 1
            if calls[object_id] <= misses:
                raise ObjectUnavailableError(object_id)
            return objects[object_id]

        return pull

    for pull_objects in (http_grid.pull_objects, supernode.pull_objects):
        start = time.monotonic()
        assert pull_objects(list(objects), flaky(4)) == objects
        assert time.monotonic() - start < 0.9
    start = time.monotonic()
    got = run_clientapp.pull_and_inflate_object_from_tree(
        tree, flaky(4), lambda _: None, return_type=Message
    )
    assert time.monotonic() - start < 0.9
    assert got.content["cfg"]["lr"] == 0.1
    np.testing.assert_array_equal(got.content["arrays"].to_numpy_ndarrays()[0], np.arange(5.0))
