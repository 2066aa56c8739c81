"""An in-process Flower ``Grid``: the real ServerApp logic and the real ClientApp, no Ray, no SuperLink.

Each "node" is a Flower ``Context`` with the simulation's node config (``partition-id``,
``num-partitions``); a message is delivered by calling the ``ClientApp`` directly. A ClientApp
exception becomes an error reply, as in the real runtime. The node gets a copy of the message's content,
as it would over the wire: what a node (or a mod such as SecAgg+'s) changes in it never reaches the server's
objects. Used by the tests and the benchmark
scripts, where a Ray start per run would cost more than the work.
"""

from __future__ import annotations

import copy
import itertools
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

CLIENT_APP_EXCEPTION = 2  # the error code the Flower runtime uses for a ClientApp exception


class InProcessGrid(Grid):
    """Deliver every message by calling ``client_app`` in this process."""

    simulation = True  # nodes hold partition ids, as in Flower's simulation (atmflow.server.routing.is_simulation)

    def __init__(self, client_app: ClientApp, run_config: Mapping[str, Any], num_nodes: int) -> None:
        self.client_app = client_app
        self._run = Run.create_empty(run_id=1)
        self._ids = itertools.count(1)
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.contexts = {
            100 + i: Context(run_id=1, node_id=100 + i,
                             node_config={"partition-id": i, "num-partitions": num_nodes},
                             state=RecordDict(), run_config=dict(run_config))
            for i in range(num_nodes)
        }

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("InProcessGrid delivers synchronously: use send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("InProcessGrid delivers synchronously: use send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return [self._deliver(m) for m in messages]

    def _deliver(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        message.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"
        received = Message(content=copy.deepcopy(message.content), dst_node_id=node,
                           message_type=message.metadata.message_type, group_id=message.metadata.group_id)
        received.metadata.__dict__["_message_id"] = message.metadata.message_id
        try:
            reply = self.client_app(received, self.contexts[node])
        except Exception as exc:  # noqa: BLE001 - turned into an error reply, like the runtime does
            reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
            reply = Message(error=Error(code=CLIENT_APP_EXCEPTION, reason=reason), reply_to=message)
        reply.metadata.__dict__["_src_node_id"] = node
        return reply
