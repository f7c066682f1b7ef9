"""Test environment for the end-to-end suite: a real control plane on loopback plus a fake kubelet.

Usable from pytest (tests/e2e/conftest.py) and from a shell (`python -m tests.e2e.testenv up|down`).
"""
