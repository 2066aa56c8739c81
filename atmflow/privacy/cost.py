"""What secure aggregation costs per round: time and bytes of a SecAgg+ train exchange against a plain one.

The protocol's cost does not depend on what the nodes trained, so the nodes here send fixed task vectors of
the run model's shapes (no fine-tuning; ``train`` answers at once), through the same code as the real
client (:func:`atmflow.privacy.secagg.masked_train_reply`, :mod:`atmflow.transport`). All nodes run in this
process (:class:`~atmflow.sim.inprocess.InProcessGrid`), one after the other: the seconds are the server's
work plus every node's, an upper bound on a deployment's wall time, where nodes mask in parallel. Bytes are
the serialised message contents (Flower's protobuf): up = replies, down = requests.

Usage: ``python -m atmflow.privacy.cost --nodes 4 8 --repeats 3`` (docs/privacy.md, "Cost").
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from atmflow import protocol, transport
from atmflow.app_config import parse_overrides
from atmflow.config import load_config
from atmflow.models.family import get_family
from atmflow.privacy.secagg import (
    SecAggSettings,
    content_bytes,
    is_secure_request,
    masked_train_reply,
    payload_bytes,
    secagg_mod,
    secure_train_exchange,
)
from atmflow.rounds.exchange import received_task_vector, send_to_tasks
from atmflow.sim.inprocess import InProcessGrid
from atmflow.threads import pin_threads


@dataclass
class Cost:
    """One exchange: seconds, and bytes up (replies) and down (requests)."""

    seconds: float
    bytes_up: int
    bytes_down: int


def fixed_vectors(expected: Mapping[str, torch.Tensor], nodes: int,
                  scale: float = 1e-3) -> list[dict[str, torch.Tensor]]:
    """One task vector per node with the model's shapes: N(0, scale^2) entries (a fine-tuning step's size)."""
    gen = torch.Generator().manual_seed(0)
    return [{k: torch.randn(v.shape, generator=gen) * scale for k, v in expected.items()} for _ in range(nodes)]


def node_app(vectors: Sequence[Mapping[str, torch.Tensor]], clipping_range: float) -> ClientApp:
    """A ClientApp whose ``train`` answers with node ``partition-id``'s fixed vector, masked inside a SecAgg+
    round and encoded plainly otherwise (as :func:`atmflow.client.app.train` does)."""
    app = ClientApp(mods=[secagg_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        index = int(context.node_config["partition-id"])
        task, tau = f"node-{index}", vectors[index]
        metrics = {protocol.TRAIN_LOSS: 0.0, protocol.NUM_EXAMPLES: 1.0}
        if is_secure_request(msg):
            content = masked_train_reply(protocol.train_metrics_reply(task, metrics), tau, clipping_range, index)
        else:
            wire, spec = transport.encode(dict(tau), "float32")
            content = protocol.train_reply(task, ArrayRecord(wire), spec, metrics)
        return Message(content=content, reply_to=msg)

    return app


def measure(nodes: int, expected: Mapping[str, torch.Tensor], base: ArrayRecord,
            settings: SecAggSettings) -> dict[str, Cost]:
    """One plain and one secure train exchange over ``nodes`` nodes."""
    vectors = fixed_vectors(expected, nodes)
    node_tasks = {100 + i: f"node-{i}" for i in range(nodes)}
    instructions = protocol.TrainInstructions(1, "adamw", 1e-4, 0.0, 32, False, 0)

    def request(_: str) -> RecordDict:
        return protocol.train_request(base, instructions)

    down = sum(payload_bytes(request(t)) for t in node_tasks.values())
    grid = InProcessGrid(node_app(vectors, settings.clipping_range), {}, nodes)
    start = time.perf_counter()
    replies = send_to_tasks(grid, node_tasks, MessageType.TRAIN, request, 600.0, "plain").enforce("fail")
    for reply in replies.valid.values():
        received_task_vector(reply, expected)
    plain = Cost(time.perf_counter() - start, sum(content_bytes(r) for r in replies.valid.values()), down)

    grid = InProcessGrid(node_app(vectors, settings.clipping_range), {}, nodes)
    start = time.perf_counter()
    secure = secure_train_exchange(grid, node_tasks, request, expected, settings, 600.0, "secure")
    secure.replies.enforce("fail")
    return {"plain": plain, "secagg": Cost(time.perf_counter() - start, sum(secure.bytes_up.values()),
                                           secure.bytes_down)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--repeats", type=int, default=3, help="exchanges per setting; the median is reported")
    parser.add_argument("--run-config", default="", help="model keys, e.g. \"model-family='mobilenet-v2'\"")
    args = parser.parse_args(argv)
    cfg = load_config(parse_overrides(args.run_config))
    pin_threads(cfg.num_threads)
    encoder = get_family(cfg).pretrained_encoder().to(cfg.dtype)
    state = encoder.state_dict()
    expected = {k: state[k] for k in get_family(cfg).trainable_keys(encoder)}
    settings = SecAggSettings(cfg.secagg_clipping_range, cfg.secagg_quantization_range, cfg.secagg_threshold)
    params = sum(v.numel() for v in expected.values())
    print(f"model {cfg.model_family}: {params} fine-tuned parameters; median of {args.repeats} exchanges; "
          "all nodes in one process, one after the other")
    print("| nodes | mode | seconds | MB up (all nodes) | MB down | seconds vs plain | bytes up vs plain |")
    print("|---|---|---|---|---|---|---|")
    for nodes in args.nodes:
        runs = [measure(nodes, expected, ArrayRecord(state), settings) for _ in range(args.repeats)]
        median = {mode: Cost(statistics.median(r[mode].seconds for r in runs), runs[0][mode].bytes_up,
                             runs[0][mode].bytes_down) for mode in ("plain", "secagg")}
        for mode, cost in median.items():
            ratio_s = cost.seconds / median["plain"].seconds
            ratio_b = cost.bytes_up / median["plain"].bytes_up
            print(f"| {nodes} | {mode} | {cost.seconds:.2f} | {cost.bytes_up / 1e6:.1f} | {cost.bytes_down / 1e6:.1f} "
                  f"| {ratio_s:.2f}x | {ratio_b:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
