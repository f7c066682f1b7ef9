"""The chaos soak (issue 15): a seeded random schedule of workload churn and component faults against the
full product on the e2e control plane, with invariants checked continuously and a history of everything.

- world.py: what the soak drives (nodes, workloads, pod shapes) and which disruptions were its own;
- ledger.py: every pod of the run as the watch shows it;
- churn.py / faults.py: the actions and fault injectors, each a class with ``apply(world, rng)``;
- invariants.py: the seven invariants of the issue, each a class (check, quiet, final);
- history.py: the record of the run (JSON lines);
- runner.py: one run (drive, wind down, settle, final checks) -> SoakResult.

Used by tests/e2e/test_soak_e2e.py (short, fixed seeds) and bench/soak.py (long, any seed).
"""
