"""Everything that talks to the Kubernetes API: client, informers, the MIG books, rule stores and actions.

Why a package of its own: every side effect on the cluster (Binding, eviction, Event, Lease, rule write)
goes through here, so a dry run or a test can swap it in one place. It may import the core, never the
components, the web layer or the process wiring.
"""
