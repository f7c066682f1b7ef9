"""The HTTP surfaces: Flask app factory and blueprints (scheduler verbs, webhook, debug/ops), JSON and TLS.

Handlers are thin: decode, call one component, encode. Decisions never live here.
"""
