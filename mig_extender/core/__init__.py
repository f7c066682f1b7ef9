"""The pure core: the MIG catalog, pods' demand, snapshots, rules and every decision made over them.

Why a package of its own: the extender, the webhook, the reconciler and the simulator must decide the same
way, so they all call these functions with an immutable snapshot and get reasons back. Nothing here may
import flask, kubernetes, cachetools or any other layer of mig_extender (tests/unit/test_layers.py checks);
time and randomness come in as parameters.
"""
