"""Every pod of the soak's namespace as a watch shows it: alive, bound, its phase, and how it ended.

The invariants read this instead of listing pods on every check. Besides the live set it keeps:
- lifecycles (pods that ended: deleted or terminal), the run's unit of work;
- per bare pod name, how many pods of that name the soak created and how many the product deleted and
  created (a bare pod the reconciler restarts is deleted and created again by it, under the same name);
- per slot (StatefulSet pod name, Job completion index, bare pod name) the live pods, for duplicates.

A relist (after an API server restart) counts the pods that vanished meanwhile as deleted.

Must not: judge; the invariants do. Never calls the API except through its reflector.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mig_extender.core.resources import ANN_ORIGINAL, ANN_RULE, ANN_SUBSTITUTE

from ..testenv.reflector import Reflector
from .history import History
from .world import SoakWorld, mig_demand

TERMINAL = ("Succeeded", "Failed")
JOB_INDEX = "batch.kubernetes.io/job-completion-index"


@dataclass
class PodRecord:
    uid: str
    name: str
    owner_kind: str
    owner_name: str
    node: str
    phase: str
    terminating: bool
    gated: bool
    demand: Mapping[str, int]
    selector: Mapping[str, str]
    annotations: Mapping[str, str]
    seen: float  # history time it was first seen
    app: str = ""  # the workload it belongs to (the soak labels every pod with it)
    job_index: str = ""
    ended: float | None = None
    deleted_by: str = ""  # harness or other, once gone
    counted: bool = False  # counted as a finished lifecycle (terminal phase or gone)
    finished: float | None = None  # history time it was first seen in a terminal phase

    @property
    def live(self) -> bool:
        """Exists, not terminating and not finished: it occupies its controller's slot."""
        return self.ended is None and not self.terminating and self.phase not in TERMINAL

    @property
    def holds_slices(self) -> bool:
        return self.ended is None and bool(self.node) and self.phase not in TERMINAL

    @property
    def waiting(self) -> bool:
        """Unbound, ungated, alive: a pod the scheduler should be placing."""
        return self.ended is None and not self.node and not self.terminating and not self.gated \
            and self.phase == "Pending"

    @property
    def slot(self) -> str:
        """The identity a controller keeps one pod for ('' for ReplicaSet pods, which have none)."""
        if not self.owner_kind:
            return f"Pod/{self.name}"
        if self.owner_kind == "StatefulSet":
            return f"StatefulSet/{self.name}"
        if self.owner_kind == "Job" and self.job_index:
            return f"Job/{self.owner_name}/{self.job_index}"
        return ""

    @property
    def rewritten(self) -> bool:
        return ANN_RULE in self.annotations or ANN_ORIGINAL in self.annotations

    @property
    def may_substitute(self) -> bool:
        return self.annotations.get(ANN_SUBSTITUTE, "").lower() != "false"


def pod_record(obj: Mapping[str, Any], seen: float) -> PodRecord:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    owner = next((r for r in meta.get("ownerReferences") or () if r.get("controller")), {})
    return PodRecord(
        uid=meta["uid"], name=meta["name"], owner_kind=owner.get("kind", ""), owner_name=owner.get("name", ""),
        node=spec.get("nodeName") or "", phase=status.get("phase") or "Pending",
        terminating=bool(meta.get("deletionTimestamp")), gated=bool(spec.get("schedulingGates")),
        demand=mig_demand(obj), selector=dict(spec.get("nodeSelector") or {}),
        annotations=dict(meta.get("annotations") or {}), seen=seen,
        job_index=(meta.get("annotations") or {}).get(JOB_INDEX, ""),
        app=(meta.get("labels") or {}).get("app", ""),
    )


@dataclass
class BareSlot:
    """The pods one bare pod name has had. product_* = what the reconciler did to it."""

    harness_created: int = 0
    created: int = 0
    harness_deleted: int = 0
    deleted: int = 0
    last_product_delete: float = 0.0
    uids: list[str] = field(default_factory=list)

    @property
    def product_created(self) -> int:
        return self.created - self.harness_created

    @property
    def product_deleted(self) -> int:
        return self.deleted - self.harness_deleted


class PodLedger:
    def __init__(self, world: SoakWorld, history: History) -> None:
        self.world, self.history = world, history
        self._lock = threading.Lock()
        self._pods: dict[str, PodRecord] = {}
        self.bare: dict[str, BareSlot] = {}
        self.created = 0
        self.lifecycles = 0
        self._stop = threading.Event()
        listing = functools.partial(world.core.list_namespaced_pod, world.namespace)
        self._reflector = Reflector("soak-pods", listing, self._on_list, self._on_event, self._stop)

    def start(self, timeout: float = 30.0) -> PodLedger:
        self._reflector.start()
        if not self._reflector.synced.wait(timeout):
            raise TimeoutError("soak pod watch: not listed")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._reflector.interrupt()
        self._reflector.thread.join(timeout=5)

    # ---- reads ---------------------------------------------------------------------------------------
    def pods(self) -> list[PodRecord]:
        """Every pod that exists now (including terminating and finished ones)."""
        with self._lock:
            return [p for p in self._pods.values() if p.ended is None]

    def records(self) -> list[PodRecord]:
        """Every pod seen and not yet forgotten, gone ones included, in the order they were first seen."""
        with self._lock:
            return sorted(self._pods.values(), key=lambda p: p.seen)

    def get(self, uid: str) -> PodRecord | None:
        with self._lock:
            return self._pods.get(uid)

    def used(self) -> dict[str, dict[str, int]]:
        """node -> resource -> slices held by the soak's pods, from the watch."""
        out: dict[str, dict[str, int]] = {}
        for pod in self.pods():
            if pod.holds_slices:
                per_node = out.setdefault(pod.node, {})
                for r, n in pod.demand.items():
                    per_node[r] = per_node.get(r, 0) + n
        return out

    def bare_slots(self) -> dict[str, BareSlot]:
        with self._lock:
            return {name: BareSlot(**vars(slot)) for name, slot in self.bare.items()}

    def expect_bare_create(self, name: str) -> None:
        """The soak is about to create bare pod ``name`` (call before the create)."""
        with self._lock:
            self.bare.setdefault(name, BareSlot()).harness_created += 1

    def cancel_bare_create(self, name: str) -> None:
        with self._lock:
            self.bare.setdefault(name, BareSlot()).harness_created -= 1

    # ---- watch ---------------------------------------------------------------------------------------
    def _on_list(self, items: list[dict[str, Any]]) -> None:
        present = {item["metadata"]["uid"] for item in items}
        with self._lock:
            gone = [p for p in self._pods.values() if p.ended is None and p.uid not in present]
        for pod in gone:
            self._ended(pod, "vanished while the watch was down")
        for item in items:
            self._on_event("MODIFIED", item)

    def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        uid = obj["metadata"]["uid"]
        with self._lock:
            old = self._pods.get(uid)
        if kind == "DELETED":
            if old is not None and old.ended is None:
                self._ended(old, "deleted")
            return
        if old is not None and old.ended is not None:
            return  # a late event for a pod already counted as gone
        new = pod_record(obj, old.seen if old else self.history.now())
        with self._lock:
            self._pods[uid] = new
            new.counted = bool(old and old.counted)
            new.finished = old.finished if old is not None and old.finished is not None else (
                self.history.now() if new.phase in TERMINAL else None)
            if new.phase in TERMINAL and not new.counted:
                new.counted = True
                self.lifecycles += 1
            if old is None:
                self.created += 1
                if not new.owner_kind:
                    slot = self.bare.setdefault(new.name, BareSlot())
                    slot.created += 1
                    slot.uids.append(uid)
        self._observe(old, new)

    def _observe(self, old: PodRecord | None, new: PodRecord) -> None:
        rec = self.history.record
        if old is None:
            rec("observe", "pod+", pod=new.name, uid=new.uid[:8], owner=new.owner_kind or "-",
                demand=",".join(f"{r.removeprefix('nvidia.com/mig-')}={n}" for r, n in new.demand.items()),
                **({"rule": new.annotations[ANN_RULE]} if ANN_RULE in new.annotations else {}))
        if new.node and (old is None or not old.node):
            rec("observe", "bound", pod=new.name, uid=new.uid[:8], node=new.node)
        if old is not None and new.phase != old.phase:
            rec("observe", "phase", pod=new.name, uid=new.uid[:8], phase=new.phase)
        if new.terminating and (old is None or not old.terminating):
            rec("observe", "terminating", pod=new.name, uid=new.uid[:8])
        if old is not None and old.gated and not new.gated:
            rec("observe", "ungated", pod=new.name, uid=new.uid[:8])

    def _ended(self, pod: PodRecord, how: str) -> None:
        # "other": a controller, the garbage collector or the product; for a bare pod only the product.
        # Decided under the lock not_the_harness() takes, so the two are ordered whichever comes first.
        with self._lock:
            by = "harness" if self.world.deleted_by_harness(pod.uid, pod.node) else "other"
            pod.ended = self.history.now()
            pod.deleted_by = by
            if not pod.counted:
                pod.counted = True
                self.lifecycles += 1
            if not pod.owner_kind:
                slot = self.bare.setdefault(pod.name, BareSlot())
                slot.deleted += 1
                if by == "harness":
                    slot.harness_deleted += 1
                else:
                    slot.last_product_delete = pod.ended
        self.history.record("observe", "pod-", pod=pod.name, uid=pod.uid[:8], how=how, by=by, phase=pod.phase)

    def not_the_harness(self, uid: str) -> None:
        """The harness's DELETE or Eviction of ``uid`` came back 404/409: it deleted nothing. The harness marks a
        uid before its call (the watch may report the deletion first), so an end the watch reported while the
        call was in flight, someone else's (the product's eviction of a bare pod it restarts), was booked as
        the harness's; move it back (soak seed 44, bare-0335: the product's recreate read as a duplicate).
        The caller has unmarked the uid already, so an end reported after this is booked right."""
        with self._lock:
            pod = self._pods.get(uid)
            if pod is None or pod.ended is None or pod.deleted_by != "harness":
                return
            pod.deleted_by = "other"
            slot = self.bare.get(pod.name) if not pod.owner_kind else None
            if slot is not None:
                slot.harness_deleted -= 1
                slot.last_product_delete = pod.ended
        self.history.record("observe", "pod- by", pod=pod.name, uid=uid[:8], by="other",
                            why="the harness's delete came back 404/409")

    def forget_ended(self, older_than: float) -> None:
        """Drop pods gone for longer than ``older_than`` seconds (a long run keeps memory flat)."""
        cutoff = self.history.now() - older_than
        with self._lock:
            for uid in [u for u, p in self._pods.items() if p.ended is not None and p.ended < cutoff]:
                del self._pods[uid]
