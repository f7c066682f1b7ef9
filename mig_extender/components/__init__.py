"""The use cases the surfaces call: the extender service, the webhook's decision, the reconciler loop.

Each takes snapshots from the cluster layer, asks the core and acts through the cluster layer; settings
and metrics live here because every component shares them. Nothing here knows about HTTP.
"""
