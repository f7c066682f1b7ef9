"""mig-extender: let Kubernetes pods run on a compatible larger NVIDIA MIG slice when theirs is sold out."""

__version__ = "0.1.0"
