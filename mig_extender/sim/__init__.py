"""Trace-driven discrete-event simulation of MIG placement policies (``mig-extender simulate``).

The simulator replays one seeded stream of pod arrivals and departures against a cluster of MIG GPUs
with static layouts, once per policy, and drives the very planner functions the live extender,
webhook and reconciler call (``planner.filter_pod``, ``choose_substitute``, ``score_nodes``,
``plan_upgrades``, ``plan_restores``, ``expired_rules``; ``Rule`` transitions; ``ClusterSnapshot``).
It never re-implements fit, substitution or restore: it only keeps the books (which pod holds which
slice, when it departs) and models the mechanics around the decisions (restarts, scheduler retries,
the reconciler's period).

Modules: ``cluster`` (nodes, layouts, slice accounting), ``workload`` (synthetic streams),
``alibaba`` (the Alibaba GPU trace mapped to MIG), ``engine`` (the event loop for the planner-driven
policies), ``fluid`` (the ``bound`` reference), ``report`` (table, JSON, plot), ``runner`` (the CLI
entry point: policies side by side, in parallel, with a progress bar). Nothing here imports flask,
kubernetes or cachetools.
"""
