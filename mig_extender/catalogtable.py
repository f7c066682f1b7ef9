"""The human-readable catalog table printed by ``mig-extender profiles``. Pure text."""

from __future__ import annotations

from .core.catalog import MODELS, lookup_models, substitutes


def render_catalog(gpu: str | None = None) -> str:
    """Every model, or those ``gpu`` names (a model, a family or a GPU feature discovery product)."""
    models = list(lookup_models(gpu)) if gpu else list(MODELS)
    out: list[str] = []
    for m in models:
        out.append(f"{m.name}  ({m.compute_slices} compute slices, {m.memory_slices} memory slices, {m.memory_gb} GB)")
        header = ("profile", "resource", "g", "mem", "max", "placements", "may be substituted by (least waste first)")
        rows = [header]
        for p in m.profiles:
            subs = ", ".join(s.name for s in substitutes(m, p.name)) or "-"
            places = "{" + ",".join(map(str, p.placements)) + f"}}:{p.memory_slices}"
            rows.append((p.name, p.resource, str(p.compute_slices), f"{p.memory_gb}GB", str(p.max_instances),
                         places, subs))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
        for r in rows:
            out.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
        out.append("")
    return "\n".join(out)
