"""One frozen Settings for a process, read from flags and environment once and validated at start.

Every knob has its unit and the reason for its default next to it. Components receive Settings; none
reads the environment on its own.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields, replace

from ..core.planner import PlanSettings, Policy
from ..core.preemption import PreemptionSettings
from ..core.repartition import RepartitionSettings
from ..core.requeue import RequeueSettings

ENV_PREFIX = "MIG_EXTENDER_"
# an owner kind as --restartable-owners takes it: Kind, or group/Kind (the group of the owner's apiVersion)
_OWNER_KIND = re.compile(r"^([a-z0-9]([a-z0-9.-]*[a-z0-9])?/)?[A-Z][A-Za-z0-9]*$")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # apimachinery validation.IsDNS1123Label


def dns_label_problem(flag: str, value: str) -> str:
    """'' when ``value`` can name a namespace or a Service, else the one-line error naming ``flag``: a name
    the API server refuses fails every write into it at run time (a Lease, an Event, a certificate's SAN
    for a Service that cannot exist)."""
    if len(value) <= 63 and _DNS_LABEL.fullmatch(value):  # match() let "ns\n" through: '$' matches before a newline
        return ""
    return f"{flag} must be a DNS label (lowercase letters, digits, '-', at most 63), got {value!r}"


class SettingsError(ValueError):
    """A setting that cannot work; the message names it by its flag."""


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# Settings that have a command-line flag; the others are set by environment variable only.
_FLAGS = {"bind": "--bind", "ops_bind": "--metrics-bind", "rule_store": "--rule-store", "rule_ttl": "--rule-ttl",
          "restore_ttl": "--restore-ttl", "restores_per_pass": "--restores-per-pass",
          "restores_in_flight": "--restores-in-flight",
          "preemptions_per_pass": "--preemptions-per-pass", "preemption_margin": "--preemption-margin",
          "preemption": "--no-preemption", "policy": "--policy", "threads": "--threads",
          "namespace": "--namespace", "log_level": "--log-level", "repartition": "--repartition",
          "repartition_window": "--repartition-window", "repartition_cooldown": "--repartition-cooldown",
          "repartition_in_flight": "--repartition-in-flight", "repartition_timeout": "--repartition-timeout",
          "repartition_settle": "--repartition-settle", "mig_configs": "--mig-configs",
          "restart_limit": "--restart-limit", "restart_window": "--restart-window",
          "restore_policy": "--restore-policy", "restore_young": "--restore-young", "aging": "--aging",
          "requeue_after": "--requeue-after", "requeue_max_delay": "--requeue-max-delay",
          "requeues_per_pass": "--requeues-per-pass", "requeue_schedulers": "--requeue-schedulers"}
REPARTITION_MODES = ("off", "advise", "on")
# --restore-policy: taker = restore only when a queued pod wants the larger slice it frees (or the pod is
# young and wasteful); always = whenever the original type frees (the older behaviour)
RESTORE_POLICIES = ("taker", "always")


def flag_of(field_name: str) -> str:
    """How a user sets ``field_name``: its flag, else its environment variable."""
    return _FLAGS.get(field_name) or ENV_PREFIX + field_name.upper()


@dataclass(frozen=True)
class Settings:
    # where the extender listens; loopback by default: it sits beside kube-scheduler in the same pod, and
    # /bind would bind any pod for whoever can reach it
    bind: str = "127.0.0.1:8888"
    # optional second address serving only /healthz, /readyz and /metrics (kubelet probes, Prometheus)
    ops_bind: str = ""
    # cluster source: exactly one of snapshot file, kubeconfig, in-cluster service account
    snapshot: str = ""
    kubeconfig: str = ""
    in_cluster: bool = False
    # rules: "memory" (one process; the default without a cluster) or "kube" (MigSubstitution objects)
    rule_store: str = ""
    # seconds a recorded substitution waits to be used before its reservation is released: the
    # reconciler restarts the pod within seconds and the replacement is scheduled seconds later, so 2
    # minutes covers a slow pod termination; longer would let an unexecuted rule pin a slice that pods
    # asking exactly for it need
    rule_ttl: float = 120.0
    # seconds a restore reservation waits for the restarted pod
    restore_ttl: float = 120.0
    # seconds finished rules (Expired, Restored) are kept for /debug/rules and the restore loop guard; never
    # less than restart_window (rule_retention): the guard counts restarts from them
    retention: float = 3600.0
    # restores (each restarts a pod) one reconciler pass may start, and that may be under way at once:
    # the simulator shows diminishing returns above these (bench/README.md), and every restart costs work
    restores_per_pass: int = 2
    restores_in_flight: int = 4
    # the restart-loop guard (core/loopguard.py): at most restart_limit restarts by us per pod lineage,
    # upgrades and restores together, within restart_window seconds; defaults and why are PlanSettings'
    restart_limit: int = PlanSettings.restart_limit
    restart_window: float = PlanSettings.restart_window
    # when a restore runs (RESTORE_POLICIES) and how young a wasteful pod is restored without a taker
    restore_policy: str = RESTORE_POLICIES[0] if PlanSettings.restore_needs_taker else RESTORE_POLICIES[1]
    restore_young: float = PlanSettings.restore_young
    # seconds pending after which a pod outranks younger pods queued for a larger type it could take as
    # a substitute (PlanSettings.aging): shorter evens out the first wait across types, longer keeps the
    # large slices for their own queues (more useful utilisation, fewer restarts; bench/README.md)
    aging: float = PlanSettings.aging
    # the reconciler's requeue of parked pods that fit in our view (core/requeue.py); defaults are its own
    requeue_after: float = RequeueSettings.after
    requeue_max_delay: float = RequeueSettings.max_delay
    requeues_per_pass: int = RequeueSettings.per_pass
    # comma-separated: the schedulerNames whose pods may be requeued (the schedulers that call the extender)
    requeue_schedulers: str = ",".join(sorted(RequeueSettings.schedulers))
    policy: str = Policy.PACK.value
    substitution: bool = True
    # owner kinds, comma-separated, that recreate a deleted pod besides the built-in ReplicaSet, StatefulSet,
    # Job and ReplicationController ("ray.io/RayCluster" or "RayCluster"): a substitution restarts the pod,
    # so pods of any other owner are left as they are (restarting them duplicates or fails them). Empty by
    # default: we cannot know what an unknown controller does with a deleted pod
    restartable_owners: str = ""
    # MIG-aware priority preemption by the reconciler (docs/preemption.md); each default is PreemptionSettings'
    preemption: bool = PreemptionSettings.enabled
    preemptions_per_pass: int = PreemptionSettings.per_pass
    preemption_margin: float = PreemptionSettings.reservation_margin
    # repartitioning idle GPUs through the MIG manager (docs/repartition.md): off, advise (Events and
    # /debug/repartition only) or on. Off by default: it changes node labels the GPU operator acts on
    repartition: str = "off"
    # the planner's and actuator's knobs; each default, its unit and why are RepartitionSettings'
    repartition_window: float = RepartitionSettings.window
    repartition_cooldown: float = RepartitionSettings.cooldown
    repartition_in_flight: int = RepartitionSettings.max_in_flight
    repartition_timeout: float = RepartitionSettings.timeout
    repartition_settle: float = RepartitionSettings.settle
    # the MIG manager's config.yaml (or its ConfigMap): the names --repartition=on may set
    mig_configs: str = ""
    # /debug/* serve rule and inventory details; turn off where the port is reachable by others
    debug_endpoints: bool = True
    # largest request body accepted (bytes): 5,000 full Node objects (nodeCacheCapable: false) are ~25 MB
    max_body_bytes: int = 32 * 1024 * 1024
    # gunicorn threads of the single worker (state lives in that one process; see README "Scaling")
    threads: int = 8
    # seconds the API may be unreachable before /readyz reports the cache stale (answers continue from
    # the cache meanwhile): longer than an API server restart, short enough to alert on a lost API
    stale_after: float = 60.0
    # the namespace our own objects (Leases, Events source) live in
    namespace: str = "mig-extender"
    log_level: str = "info"

    def validate(self, bind_flag: str = "--bind", namespace_from: str = "--namespace") -> Settings:
        """Self, or SettingsError naming every bad setting at once by its flag (or environment variable);
        ``bind_flag`` is the flag that set ``bind`` (reconcile serves its --metrics-bind there), and
        ``namespace_from`` what set ``namespace`` (serve and webhook have no --namespace: the environment)."""
        errors = [e for e in (self._source_error(), *self._address_errors(bind_flag), *self._value_errors(),
                              dns_label_problem(namespace_from, self.namespace)) if e]
        if errors:
            raise SettingsError("; ".join(errors))
        return self

    def _source_error(self) -> str:
        if sum([bool(self.snapshot), bool(self.kubeconfig), self.in_cluster]) > 1:
            return "give at most one of --snapshot, --kubeconfig, --in-cluster"
        if self.rule_store == "kube" and self.snapshot:
            return "--rule-store kube needs a cluster, not --snapshot"
        return ""

    def _address_errors(self, bind_flag: str) -> list[str]:
        errors = []
        for required, flag, value in ((True, bind_flag, self.bind), (False, "--metrics-bind", self.ops_bind)):
            host, sep, port = value.rpartition(":")
            if (value or required) and (not sep or not host or not port.isdigit() or not 0 < int(port) < 65536):
                errors.append(f"{flag} must be HOST:PORT, got {value!r}")
        if self.ops_bind and self.ops_bind.rpartition(":")[2] == self.bind.rpartition(":")[2]:
            errors.append("--metrics-bind needs a port of its own")
        return errors

    def _value_errors(self) -> list[str]:
        errors = []
        if self.rule_store not in ("", "memory", "kube"):
            errors.append(f"{flag_of('rule_store')} must be one of memory, kube, got {self.rule_store!r}")
        if self.policy not in {p.value for p in Policy}:
            policies = ", ".join(p.value for p in Policy)
            errors.append(f"{flag_of('policy')} must be one of {policies}, got {self.policy!r}")
        if self.log_level.lower() not in LOG_LEVELS:
            errors.append(f"{flag_of('log_level')} must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        for name in ("rule_ttl", "restore_ttl", "retention", "stale_after"):
            if getattr(self, name) <= 0:
                errors.append(f"{flag_of(name)} must be > 0 seconds, got {getattr(self, name):g}")
        if self.preemption_margin < 0:
            errors.append(f"{flag_of('preemption_margin')} must be >= 0 seconds, got {self.preemption_margin:g}")
        if self.preemptions_per_pass < 1:
            errors.append(f"{flag_of('preemptions_per_pass')} must be >= 1 (--no-preemption turns it off), "
                          f"got {self.preemptions_per_pass}")
        for name in ("restores_per_pass", "restores_in_flight"):
            if getattr(self, name) < 0:
                errors.append(f"{flag_of(name)} must be >= 0 (0 turns restores off), got {getattr(self, name)}")
        if self.threads < 1:
            errors.append(f"{flag_of('threads')} must be >= 1, got {self.threads}")
        if self.max_body_bytes < 1024:
            errors.append(f"{flag_of('max_body_bytes')} must be >= 1024, got {self.max_body_bytes}")
        errors += self._repartition_errors()
        errors += self._restart_errors()
        bad = [k for k in self.owner_kinds if not _OWNER_KIND.match(k)]
        if bad:
            errors.append(f"--restartable-owners takes Kind or group/Kind (e.g. ray.io/RayCluster), got {bad}")
        return errors

    def _repartition_errors(self) -> list[str]:
        errors = []
        if self.repartition not in REPARTITION_MODES:
            errors.append(f"{flag_of('repartition')} must be one of {', '.join(REPARTITION_MODES)}, "
                          f"got {self.repartition!r}")
        if self.repartition == "on" and not self.mig_configs:
            errors.append(f"{flag_of('repartition')}=on needs {flag_of('mig_configs')} FILE: the MIG manager's "
                          "config names are all it can set")
        for name in ("repartition_window", "repartition_cooldown", "repartition_settle"):
            if getattr(self, name) < 0:
                errors.append(f"{flag_of(name)} must be >= 0 seconds, got {getattr(self, name):g}")
        if self.repartition_timeout <= 0:
            errors.append(f"{flag_of('repartition_timeout')} must be > 0 seconds, got {self.repartition_timeout:g}")
        if self.repartition_in_flight < 1:
            errors.append(f"{flag_of('repartition_in_flight')} must be >= 1, got {self.repartition_in_flight}")
        return errors

    def _restart_errors(self) -> list[str]:
        """The loop guard, restores and requeues: a value that would silently stop or loop them."""
        errors = []
        if self.restart_limit < 1:
            errors.append(f"{flag_of('restart_limit')} must be >= 1 (0 would refuse every substitution as a "
                          "restart loop: serve --no-substitution turns substitution off, reconcile "
                          f"--restores-per-pass 0 restores), got {self.restart_limit}")
        if self.restart_window <= 0:
            errors.append(f"{flag_of('restart_window')} must be > 0 seconds, got {self.restart_window:g}")
        if self.restore_policy.lower() not in RESTORE_POLICIES:
            errors.append(f"{flag_of('restore_policy')} must be one of {', '.join(RESTORE_POLICIES)}, "
                          f"got {self.restore_policy!r}")
        if self.restore_young < 0:
            errors.append(f"{flag_of('restore_young')} must be >= 0 seconds, got {self.restore_young:g}")
        if not self.aging >= 0:  # NaN too
            errors.append(f"{flag_of('aging')} must be >= 0 seconds (inf: never), got {self.aging:g}")
        if self.requeue_after <= 0:  # delays double from it: 0 is a status write every pass
            errors.append(f"{flag_of('requeue_after')} must be > 0 seconds (0 would requeue every pass), "
                          f"got {self.requeue_after:g}")
        elif self.requeue_max_delay < self.requeue_after:
            errors.append(f"{flag_of('requeue_max_delay')} must be >= {flag_of('requeue_after')} "
                          f"({self.requeue_after:g} s), got {self.requeue_max_delay:g}")
        if self.requeues_per_pass < 0:
            errors.append(f"{flag_of('requeues_per_pass')} must be >= 0 (0 turns requeues off), "
                          f"got {self.requeues_per_pass}")
        if not self.requeue_settings.schedulers:
            errors.append(f"{flag_of('requeue_schedulers')} must name at least one scheduler "
                          f"({flag_of('requeues_per_pass')} 0 turns requeues off), got {self.requeue_schedulers!r}")
        return errors

    @property
    def repartition_settings(self) -> RepartitionSettings:
        return RepartitionSettings(window=self.repartition_window, cooldown=self.repartition_cooldown,
                                   max_in_flight=self.repartition_in_flight, settle=self.repartition_settle,
                                   timeout=self.repartition_timeout)

    @property
    def has_cluster(self) -> bool:
        return bool(self.kubeconfig) or self.in_cluster

    @property
    def store_kind(self) -> str:
        return self.rule_store or ("kube" if self.has_cluster else "memory")

    @property
    def owner_kinds(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.restartable_owners.split(",") if k.strip())

    @property
    def plan(self) -> PlanSettings:
        return PlanSettings(rule_ttl=self.rule_ttl, restore_ttl=self.restore_ttl, policy=Policy(self.policy),
                            substitution=self.substitution, restores_per_pass=self.restores_per_pass,
                            restores_in_flight=self.restores_in_flight, restartable_owners=self.owner_kinds,
                            restart_limit=self.restart_limit, restart_window=self.restart_window,
                            restore_needs_taker=self.restore_policy.lower() == "taker",
                            restore_young=self.restore_young, aging=self.aging)

    @property
    def requeue_settings(self) -> RequeueSettings:
        return RequeueSettings(after=self.requeue_after, max_delay=self.requeue_max_delay,
                               per_pass=self.requeues_per_pass,
                               schedulers=frozenset(n.strip() for n in self.requeue_schedulers.split(",") if n.strip()))

    @property
    def rule_retention(self) -> float:
        """Seconds finished rules are kept: ``retention``, but never less than ``restart_window``, since the
        loop guard counts a lineage's restarts from those rules (a rule deleted sooner is a restart forgotten)."""
        return max(self.retention, self.restart_window)

    @property
    def preemption_settings(self) -> PreemptionSettings:
        return PreemptionSettings(enabled=self.preemption, per_pass=self.preemptions_per_pass,
                                  reservation_margin=self.preemption_margin)

    def with_env(self, environ: dict[str, str] | None = None) -> Settings:
        """Overlay ``MIG_EXTENDER_<FIELD>`` environment variables (flags given explicitly win later)."""
        environ = dict(os.environ if environ is None else environ)
        changes: dict[str, object] = {}
        for f in fields(self):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            current = getattr(self, f.name)
            try:
                if isinstance(current, bool):
                    changes[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
                elif isinstance(current, int):
                    changes[f.name] = int(raw)
                elif isinstance(current, float):
                    changes[f.name] = float(raw)
                else:
                    changes[f.name] = raw
            except ValueError as exc:
                raise SettingsError(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: {exc}") from exc
        return replace(self, **changes)
