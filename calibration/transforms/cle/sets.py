"""The search for CLE sets: conv→conv pairs and conv→depthwise→conv triplets, ended by forks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from calibration.graph.index import GraphIndex, conv_group
from calibration.graph.patterns import clip_bounds, constant_min_bound, is_depthwise
from workload.errors import CalibrationError

LinkKind = Literal["none", "relu", "clip", "relu_min"]


@dataclass(frozen=True)
class Link:
    """What lies between two layers of a set."""

    kind: LinkKind
    tensor: str  # the tensor the next layer reads
    nodes: tuple[str, ...] = ()  # the activation's node names, in order
    bound: float = np.inf  # a scalar Clip's upper bound


@dataclass(frozen=True)
class CleSet:
    layers: tuple[str, ...]  # two Conv node names, or three with a depthwise Conv in the middle
    links: tuple[Link, ...]  # len(layers) - 1

    @property
    def has_relu6(self) -> bool:
        return any(link.kind in ("clip", "relu_min") for link in self.links)


@dataclass(frozen=True)
class SkippedSet:
    layers: tuple[str, ...]
    reason: str


def _activation(node: onnx.NodeProto, index: GraphIndex) -> tuple[Link | None, str | None]:
    """The link an activation node starts (with its output tensor), or why it is not one."""
    if node.op_type == "Relu":
        after = index.single_consumer(node.output[0])
        if after is not None and constant_min_bound(after, index) is not None:
            return Link("relu_min", after.output[0], (node.name, after.name)), None
        return Link("relu", node.output[0], (node.name,)), None
    if node.op_type == "Clip":
        low, high = clip_bounds(node, index)
        if low != 0.0 or not np.isfinite(high):
            return None, f"Clip({low:g}, {high:g}) is neither ReLU nor ReLU6-like"
        return Link("clip", node.output[0], (node.name,), high), None
    return None, None


def _reached_convs(tensor: str, index: GraphIndex) -> list[str]:
    """Conv consumers of ``tensor``, directly or through one activation (for reporting forks)."""
    names = []
    for user in index.consumers.get(tensor, []):
        if user.op_type == "Conv":
            names.append(user.name)
        elif user.op_type in ("Relu", "Clip"):
            names.extend(u.name for u in index.consumers.get(user.output[0], []) if u.op_type == "Conv")
    return names


def _follow(conv: onnx.NodeProto, index: GraphIndex) -> tuple[onnx.NodeProto | None, Link | None,
                                                               SkippedSet | None]:
    """The Conv that ``conv`` feeds through at most one activation, the link, or why not."""
    tensor = conv.output[0]
    link = Link("none", tensor)
    for hop in range(2):
        users = index.consumers.get(tensor, [])
        if len(users) != 1 or tensor in index.graph_outputs():
            partners = _reached_convs(tensor, index)
            if not partners:
                return None, None, None
            return None, None, SkippedSet((conv.name, *partners),
                                          f"'{tensor}' has {len(users)} consumers: a fork ends a set")
        user = users[0]
        if user.op_type == "Conv":
            break
        activation, reason = _activation(user, index) if hop == 0 else (None, None)
        if activation is None:
            if reason is None:
                return None, None, None
            partners = _reached_convs(user.output[0], index)
            return None, None, SkippedSet((conv.name, *partners), reason) if partners else None
        link = activation
        tensor = link.tensor
    nxt = users[0]
    if nxt.input[0] != tensor:
        return None, None, SkippedSet((conv.name, nxt.name), f"'{nxt.name}' reads '{tensor}' as a weight or bias")
    if not index.is_constant(nxt.input[1]):
        return None, None, SkippedSet((conv.name, nxt.name), f"'{nxt.name}' has a non-constant weight")
    for node in (conv, nxt):
        weight = index.constant(node.input[1])
        if conv_group(node) != 1 and not is_depthwise(node, weight):
            return None, None, SkippedSet((conv.name, nxt.name),
                                          f"'{node.name}' is a grouped conv (group {conv_group(node)}), "
                                          "neither ordinary nor depthwise")
    return nxt, link, None


def find_cle_sets(model: onnx.ModelProto) -> tuple[list[CleSet], list[SkippedSet]]:
    """Pairs and triplets in graph order, plus every candidate that was not taken and why."""
    index = GraphIndex.build(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    names = [c.name for c in convs]
    if "" in names or len(set(names)) != len(names):
        raise CalibrationError("CLE needs every Conv node to have a unique, non-empty name")
    successor: dict[str, tuple[onnx.NodeProto, Link]] = {}
    skipped: list[SkippedSet] = []
    for conv in convs:
        if not index.is_constant(conv.input[1]):
            continue
        nxt, link, why = _follow(conv, index)
        if nxt is not None and link is not None:
            successor[conv.name] = (nxt, link)
        elif why is not None:
            skipped.append(why)
    depthwise = {c.name for c in convs if index.is_constant(c.input[1])
                 and is_depthwise(c, index.constant(c.input[1]))}
    has_predecessor = {nxt.name for nxt, _ in successor.values()}
    sets: list[CleSet] = []
    for conv in convs:
        if conv.name in has_predecessor or conv.name not in successor:
            continue
        chain, links = [conv.name], []
        while chain[-1] in successor:
            nxt, link = successor[chain[-1]]
            chain.append(nxt.name)
            links.append(link)
        i = 0
        while i < len(chain) - 1:
            if i + 2 < len(chain) and chain[i + 1] in depthwise:
                sets.append(CleSet(tuple(chain[i:i + 3]), tuple(links[i:i + 2])))
                i += 2
            else:
                sets.append(CleSet(tuple(chain[i:i + 2]), (links[i],)))
                i += 1
    return sets, skipped


def link_tensors(model: onnx.ModelProto) -> list[str]:
    """The tensors between the layers of every CLE set (what activation-aware CLE profiles)."""
    sets, _ = find_cle_sets(model)
    return list(dict.fromkeys(link.tensor for s in sets for link in s.links))
