"""Fault injectors: each is a small class whose ``apply(world, rng)`` breaks one component and returns an
ActiveFault that says when and how it is undone. The runner keeps at most one fault active at a time,
so a violation points at one fault (and the history says which).

A fault also says what it impairs, and for how long after it is undone (watches resume, the scheduler's
backoff runs out, a new leader waits out the Lease): invariants do not count waiting in that window.

Must not: check anything, or undo a fault it did not make.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..testenv.stack import GROUP, PLURAL, VERSION
from .world import MERGE, Skip, SoakWorld

LEASE_S = 15.0  # the reconciler's Lease duration: a killed leader's successor waits this long


@dataclass
class ActiveFault:
    name: str
    until: float  # monotonic time the fault is undone
    recover: Callable[[], None]
    detail: dict[str, Any] = field(default_factory=dict)


class Fault:
    name = "fault"
    weight = 1.0

    def apply(self, world: SoakWorld, rng: random.Random) -> ActiveFault:
        raise NotImplementedError


class KillExtender(Fault):
    """SIGKILL the extender (master and worker), restart it on the same port after a short while."""

    name, weight = "kill-extender", 3.0

    def apply(self, world: SoakWorld, rng: random.Random) -> ActiveFault:
        down = rng.uniform(0.0, 4.0)
        process = world.stack.extender.process if world.stack.extender else None
        pid = process.pid if process else 0
        world.stack.crash_extender()
        world.impair(down + 30, "scheduling")

        def recover() -> None:
            world.stack.revive_extender()
            world.impair(20, "scheduling")

        return ActiveFault(self.name, time.monotonic() + down, recover, {"pid": pid, "down_s": round(down, 1)})


class KillReconcilerLeader(Fault):
    """SIGKILL the Lease holder; a new reconciler (new identity) is started a little later, so two run again."""

    name, weight = "kill-leader", 2.0

    def apply(self, world: SoakWorld, rng: random.Random) -> ActiveFault:
        holder = world.stack.lease_holder()
        if holder not in world.stack.reconcilers():
            raise Skip(f"lease holder {holder!r} is not one of ours")
        world.stack.kill_reconciler(holder)
        world.impair(LEASE_S + 15, "reconciler")
        successor = world.new_reconciler_identity()
        down = rng.uniform(3.0, 15.0)
        return ActiveFault(self.name, time.monotonic() + down, lambda: world.stack.start_reconciler(successor),
                           {"killed": holder, "successor": successor, "down_s": round(down, 1)})


class WebhookDown(Fault):
    """The webhook process is stopped for a while (failurePolicy Ignore: pods are created unrewritten)."""

    name, weight = "webhook-down", 2.0

    def apply(self, world: SoakWorld, rng: random.Random) -> ActiveFault:
        down = rng.uniform(5.0, 15.0)
        world.stack.stop_webhook()
        return ActiveFault(self.name, time.monotonic() + down, world.stack.start_webhook, {"down_s": round(down, 1)})


class RestartApiServer(Fault):
    """kube-apiserver goes away and comes back on the same address: every watch breaks and resumes."""

    name, weight = "apiserver-restart", 1.0

    def apply(self, world: SoakWorld, rng: random.Random) -> ActiveFault:
        down = rng.uniform(2.0, 5.0)
        world.cluster.stop_apiserver()
        world.impair(down + 30, "scheduling", "reconciler")

        def recover() -> None:
            world.cluster.start_apiserver()
            world.impair(30, "scheduling", "reconciler")

        return ActiveFault(self.name, time.monotonic() + down, recover, {"down_s": round(down, 1)})


class SlowKubelet(Fault):
    """The fake kubelet reports nothing for a while (pods bound but not Running, deletions not final),
    then catches up in watch order."""

    name, weight = "slow-kubelet", 2.0

    def apply(self, world: SoakWorld, rng: random.Random) -> ActiveFault:
        slow = rng.uniform(3.0, 12.0)
        hold = world.cluster.fake_kubelet.holding_pods()
        hold.__enter__()
        return ActiveFault(self.name, time.monotonic() + slow, lambda: hold.__exit__(None, None, None),
                           {"slow_s": round(slow, 1)})


class ConflictStorm(Fault):
    """A second writer touches every MigSubstitution many times a second (a label), so each of the
    product's writes, made from the resourceVersion it read, meets 409 Conflicts."""

    name, weight = "409-storm", 2.0
    period = 0.05

    def apply(self, world: SoakWorld, rng: random.Random) -> ActiveFault:
        length = rng.uniform(5.0, 15.0)
        stop = threading.Event()
        writes = [0]

        def storm() -> None:
            while not stop.is_set():
                try:
                    rules = world.custom.list_namespaced_custom_object(GROUP, VERSION, world.namespace, PLURAL)
                    for rule in rules.get("items") or ():
                        if stop.is_set():
                            break
                        writes[0] += 1
                        world.custom.patch_namespaced_custom_object(
                            GROUP, VERSION, world.namespace, PLURAL, rule["metadata"]["name"],
                            {"metadata": {"labels": {"mig-soak/poke": str(writes[0])}}}, _content_type=MERGE)
                except Exception:
                    pass  # the rule went away (404), or the API server did (restarting): keep storming
                stop.wait(self.period)

        thread = threading.Thread(target=storm, name="soak-409-storm", daemon=True)
        thread.start()

        def recover() -> None:
            stop.set()
            thread.join(timeout=10)
            world.history.record("observe", "409-storm-writes", writes=writes[0])

        return ActiveFault(self.name, time.monotonic() + length, recover, {"length_s": round(length, 1)})


FAULTS: tuple[Fault, ...] = (
    KillExtender(), KillReconcilerLeader(), WebhookDown(), RestartApiServer(), SlowKubelet(), ConflictStorm(),
)
