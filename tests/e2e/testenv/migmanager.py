"""A fake of the GPU operator's MIG manager for the fake nodes, driven by their node labels.

The real one (NVIDIA/mig-parted, deployments/gpu-operator/reconfigure-mig.sh) watches its node's
``nvidia.com/mig.config=<name>``; a name its ConfigMap lacks ends in ``failed``; a config already in
place ends in ``success`` at once; otherwise it writes ``pending``, stops the device plugin (the node's
MIG allocatable drops to 0 while running pods keep running), applies the config, starts the device
plugin again and writes ``success``, or ``failed`` when the apply failed, for instance because a GPU
instance it had to destroy was in use: it never evicts anything. This fake does the same with
``delay`` seconds for the apply, and can wedge in ``pending`` (gpu-operator #2833) for timeout tests;
``unwedge`` then restarts it as the GPU operator restarts its pod: it applies the label as it is now.

Which GPU a pod uses is not in the API; the fake device plugin is taken to hand out instances lowest
GPU index first (``gpus_in_use``), so a test knows which GPU its pod holds.

Must not: schedule, admit or evict pods (the fake kubelet admits; nothing here deletes a pod).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mig_extender.core.catalog import GpuModel, model
from mig_extender.core.repartition import (
    LABEL_MIG_CONFIG,
    LABEL_MIG_CONFIG_STATE,
    STATE_FAILED,
    STATE_PENDING,
    STATE_SUCCESS,
    Layout,
    NamedConfig,
    normal,
)

from .fakekubelet import FakeKubelet

log = logging.getLogger("testenv.migmanager")


@dataclass(frozen=True)
class Outcome:
    """What the MIG manager does with one label value: ``state`` is where it ends (pending = apply)."""

    state: str
    target: tuple[Layout, ...] | None = None
    reason: str = ""


def gpus_in_use(gpu: GpuModel, layouts: Sequence[Layout], used: Mapping[str, int]) -> set[int]:
    """GPU indices holding a used instance, instances handed out lowest GPU first."""
    busy: set[int] = set()
    for resource, count in used.items():
        left = count
        for i, layout in enumerate(layouts):
            if left <= 0:
                break
            here = sum(1 for name in layout if gpu.profile(name).resource == resource)
            if here:
                busy.add(i)
                left -= here
    return busy


def decide(gpu: GpuModel, layouts: Sequence[Layout], used: Mapping[str, int], config: str,
           configs: Mapping[str, NamedConfig]) -> Outcome:
    """The MIG manager's verdict on ``nvidia.com/mig.config=config`` for a node in ``layouts``."""
    found = configs.get(config)
    if found is None:
        return Outcome(STATE_FAILED, reason=f"config {config!r} is not in the ConfigMap")
    problems = found.problems(gpu)
    if problems:
        return Outcome(STATE_FAILED, reason="; ".join(problems))
    current = tuple(normal(x) for x in layouts)
    target = found.layouts(current)
    if target == current:
        return Outcome(STATE_SUCCESS, target, "already applied")
    changed = {i for i, (a, b) in enumerate(zip(current, target, strict=True)) if a != b}
    busy = sorted(changed & gpus_in_use(gpu, current, used))
    if busy:
        return Outcome(STATE_FAILED, target, f"GPU {busy} in use: its GPU instances cannot be destroyed")
    return Outcome(STATE_PENDING, target)


def allocatable(gpu: GpuModel, layouts: Sequence[Layout]) -> dict[str, int]:
    out: dict[str, int] = {}
    for layout in layouts:
        for name in layout:
            r = gpu.profile(name).resource
            out[r] = out.get(r, 0) + 1
    return out


@dataclass
class _Managed:
    gpu: GpuModel
    layouts: tuple[Layout, ...]
    handled: str | None = None      # the label value last acted on


class FakeMigManager:
    """Serves the nodes given to ``manage()``; one worker thread applies configs in label order."""

    def __init__(self, kubelet: FakeKubelet, configs: Sequence[NamedConfig], delay: float = 1.0) -> None:
        self.kubelet = kubelet
        self.configs = {c.name: c for c in configs}
        self.delay = delay
        self._lock = threading.Lock()
        self._nodes: dict[str, _Managed] = {}
        self._wedged: set[str] = set()
        self._stuck: set[str] = set()  # wedged nodes that stopped a change in pending
        self._history: dict[str, list[str]] = {}
        self._work: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-mig-manager", daemon=True)
        self._thread.start()
        kubelet.observe_nodes(self._on_node)

    def manage(self, node: str, gpu: str, layouts: Sequence[Sequence[str]]) -> None:
        """Take over ``node`` (already registered) with these per-GPU layouts and advertise them."""
        m = model(gpu)
        state = _Managed(m, tuple(normal(x) for x in layouts))
        self.kubelet.set_node(node, allocatable(m, state.layouts), gpu=gpu, gpu_count=len(state.layouts), replace=True)
        with self._lock:
            self._nodes[node] = state

    def wedge(self, node: str, wedged: bool = True) -> None:
        """From now on a change on ``node`` stops after writing ``pending`` (the label stays so)."""
        with self._lock:
            (self._wedged.add if wedged else self._wedged.discard)(node)

    def unwedge(self, node: str) -> None:
        """The MIG manager's pod restarted on ``node``: it is no longer wedged and applies the node's
        label as it is now (a change it stopped in ``pending`` is carried out, or the value set back
        meanwhile is found in place), as the real one reads its label again when it starts."""
        with self._lock:
            self._wedged.discard(node)
            stuck = node in self._stuck
            self._stuck.discard(node)
            if node not in self._nodes or not stuck:
                return
        value = (self.kubelet.core.read_node(node).metadata.labels or {}).get(LABEL_MIG_CONFIG)
        if value is None:
            return
        with self._lock:
            if node in self._nodes:
                self._nodes[node].handled = value
        self._work.put((node, value))

    def managed(self) -> list[str]:
        with self._lock:
            return sorted(self._nodes)

    def release(self, node: str) -> None:
        """Stop serving ``node`` (it was removed)."""
        with self._lock:
            self._nodes.pop(node, None)
            self._wedged.discard(node)
            self._stuck.discard(node)

    def layouts(self, node: str) -> tuple[Layout, ...]:
        with self._lock:
            return self._nodes[node].layouts

    def history(self, node: str) -> list[str]:
        """Every state label written on ``node``, in order."""
        with self._lock:
            return list(self._history.get(node, []))

    def stop(self) -> None:
        self.kubelet.unobserve_nodes(self._on_node)
        self._stop.set()
        self._work.put(None)
        self._thread.join(timeout=5)

    # ---- internals ---------------------------------------------------------------------------------
    def _on_node(self, node: Mapping[str, Any]) -> None:
        name = node["metadata"]["name"]
        value = (node["metadata"].get("labels") or {}).get(LABEL_MIG_CONFIG)
        with self._lock:
            managed = self._nodes.get(name)
            if managed is None or value is None or value == managed.handled:
                return
            managed.handled = value
        self._work.put((name, value))

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._work.get()
            if item is None:
                return
            try:
                self._apply(*item)
            except Exception:
                log.exception("fake MIG manager failed on %s", item)

    def _used(self, node: str) -> dict[str, int]:
        return {r: int(q) for r, q in self.kubelet.usage(node).items() if r.startswith("nvidia.com/mig-") and q > 0}

    def _apply(self, node: str, config: str) -> None:
        with self._lock:
            managed = self._nodes.get(node)
            wedged = node in self._wedged
            stuck = node in self._stuck
        if managed is None or stuck:
            return  # released meanwhile (the node went away), or stuck in a change: unwedge() reads the label
        outcome = decide(managed.gpu, managed.layouts, self._used(node), config, self.configs)
        log.info("%s: mig.config=%s -> %s %s", node, config, outcome.state, outcome.reason)
        if outcome.state == STATE_SUCCESS:
            # nothing to apply; the device plugin runs (again, after a wedged change paused it)
            self._write(node, outcome.state, allocatable(managed.gpu, managed.layouts), replace=True)
            return
        if outcome.target is None:
            self._write(node, outcome.state)  # not even a valid name
            return
        before = allocatable(managed.gpu, managed.layouts)
        self._write(node, STATE_PENDING, {r: 0 for r in before})  # the device plugin stops
        if wedged:
            with self._lock:
                self._stuck.add(node)
            return
        self._stop.wait(self.delay)
        if outcome.state == STATE_FAILED:
            self._write(node, STATE_FAILED, before)  # the device plugin comes back as it was
            return
        with self._lock:
            managed.layouts = outcome.target
        self._write(node, STATE_SUCCESS, allocatable(managed.gpu, outcome.target), replace=True)

    def _write(self, node: str, state: str, resources: Mapping[str, int] | None = None, replace: bool = False) -> None:
        with self._lock:
            self._history.setdefault(node, []).append(state)
        # mig-parted's script labels the node with kubectl; the fake writes through the registry
        self.kubelet.set_node(node, dict(resources) if resources is not None else None,
                              labels={LABEL_MIG_CONFIG_STATE: state}, replace=replace)
