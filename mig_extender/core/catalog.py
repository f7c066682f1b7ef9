"""The MIG catalog: every GPU model's MIG profiles, their placements and which may stand in for which.

Pure data and pure functions. This module must not import flask, kubernetes or cachetools: the planner,
the simulator and the CLI all read it, and a test enforces the import rule.

Source of the tables: NVIDIA Multi-Instance GPU User Guide, "Supported MIG Profiles"
(docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-mig-profiles.html), the per-product tables
(profile, fraction of memory, fraction of SMs, number of instances available) and the placements that
``nvidia-smi mig -lgipp`` prints (``{start,...}:size`` over the GPU's memory slices), e.g. on A100-40GB:
1g.5gb {0,1,2,3,4,5,6}:1, 1g.10gb {0,2,4,6}:2, 2g.10gb {0,2,4}:2, 3g.20gb {0,4}:4, 4g.20gb {0}:4,
7g.40gb {0}:8. A30 has 4 memory slices: 1g.6gb {0,1,2,3}:1, 2g.12gb {0,2}:2, 4g.24gb {0}:4.
The guide also states that on the 7-slice GPUs a 3g and a 4g GPU instance cannot exist together even
though their memory slices would not overlap (we encode that as ``exclusive_pairs``), and that at most
one media-extension (``+me``) instance exists per GPU (there is one set of JPEG/OFA engines).

Models added for issue 16 (the guide's "Supported GPUs" table and its deployment considerations list
them; memory and maximum instances come from that table): GB200 (186 GB, 7 instances), H100 on GH200
(96 GB), H20 (96 GB), RTX PRO 6000 Blackwell (96 GB, 4 instances), B300 and GB300. The guide's
per-product profile tables were not readable here beyond A30 and A100, so each new table's profile
names and instance counts are NVIDIA's own ``nvidia-smi mig -lgip`` output as recorded in NVIDIA's
MIG manager default configuration (github.com/NVIDIA/mig-parted, deployments/systemd/config-default.yaml
at v0.15.0, one ``device-filter`` per PCI device, and the pull requests that added each device: #139
GH200 144G HBM3e, #166 and #187 B200, #224 RTX PRO 6000 Blackwell; NVIDIA/gpu-operator#1303 GB200).
The seven-slice models share A100's instance counts and profile ids, so they share its placements.
RTX PRO 6000 Blackwell has four slices (4 x 1g, 2 x 2g, 1 x 4g, like A30); its placements are taken
to be aligned as A30's (no ``-lgipp`` output was found), which only the simulator and this table use.
Its ``+gfx``, ``-me`` and ``+me.all`` variants are not modelled. H800 and A800 (export variants) have
the same device groups as H100 and A100 in that file, hence the same tables. Not in the catalog, for
want of a sourced table: RTX PRO 5000 Blackwell (48 GB, 2 instances), RTX PRO 4500 Blackwell and the
Thor iGPU.

GPU feature discovery's ``nvidia.com/gpu.product`` label is the NVML device name with spaces turned
into dashes (``NVIDIA-A100-SXM4-40GB``, ``NVIDIA-GH200-480GB``, ``NVIDIA-RTX-PRO-6000-Blackwell-Server-
Edition``); ``match_product`` maps it to a family and, with the ``nvidia.com/gpu.memory`` label
or a size in the name, to a model.

Memory in profile names drifts between drivers (``7g.79gb`` vs ``7g.80gb``, ``3g.39gb``): profiles are
keyed on compute slices and memory slices, and a name resolves through known aliases or, failing
that, to the profile with the same compute slices and the nearest memory at or above the name's (within
``_MEMORY_DRIFT``). An alias or a drifted name never resolves to less memory than it states.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

RESOURCE_PREFIX = "nvidia.com/mig-"

# 1g.5gb, 7g.80gb, 1g.10gb+me (profile names) and 1g.10gb.me (the device plugin's resource spelling).
_PROFILE_RE = re.compile(r"^(?P<g>[1-9]\d?)g\.(?P<mem>[1-9]\d{0,3})gb(?P<me>\+me|\.me)?$")
# Drivers round the memory in names differently; 2 GB covers every drift seen (79/80, 39/40, 93/94).
_MEMORY_DRIFT = 2


class ProfileError(ValueError):
    """A profile or resource name that is malformed or unknown; the message says which and why."""


@dataclass(frozen=True, order=True)
class ProfileShape:
    """What a slice offers, independent of GPU model: enough to decide compatibility.

    Shapes compare by capability, so a shape parsed from a pod's resource name can be matched against
    any node's profiles, whatever GPU the node has.
    """

    compute_slices: int
    memory_gb: int
    media_extensions: bool = False

    @property
    def name(self) -> str:
        return f"{self.compute_slices}g.{self.memory_gb}gb" + ("+me" if self.media_extensions else "")

    @property
    def resource(self) -> str:
        return profile_resource(self.name)


@dataclass(frozen=True)
class Profile:
    """One MIG GPU-instance profile of one GPU model, as NVIDIA's tables give it."""

    name: str
    compute_slices: int
    memory_slices: int
    memory_gb: int
    max_instances: int
    placements: tuple[int, ...]
    media_extensions: bool = False
    full_gpu: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def resource(self) -> str:
        return profile_resource(self.name)

    @property
    def shape(self) -> ProfileShape:
        # The full GPU has every media engine, so it can host a +me workload.
        return ProfileShape(self.compute_slices, self.memory_gb, self.media_extensions or self.full_gpu)


@dataclass(frozen=True)
class GpuModel:
    """A MIG-capable GPU: its slice geometry, its profiles and the constraints between them."""

    name: str
    family: str
    memory_gb: int
    compute_slices: int
    memory_slices: int
    profiles: tuple[Profile, ...]
    exclusive_pairs: frozenset[frozenset[int]] = field(default=frozenset())

    def __hash__(self) -> int:
        # Every profile lookup hashes the model (the @cache of _profile_index); the generated hash walks
        # all its Profiles (~2 us). The name identifies a model, so this agrees with the generated ==.
        return hash(self.name)

    def profile(self, name: str) -> Profile:
        """The profile called ``name`` (canonical name, alias, or drifted memory); ProfileError if none.

        Drift resolves upward only, to a profile with the same or more memory than the name says (drivers
        round a slice's memory down: 79 for 80, 39 for 40). Resolving down would let ``1g.20gb`` on an
        H200 mean its 1g.18gb, and a pod that asked for 20 GB be given 18."""
        found = _profile_index(self).get(name)
        if found is not None:
            return found
        shape = parse_profile_name(name)
        near = [
            p for p in self.profiles
            if p.compute_slices == shape.compute_slices
            and p.media_extensions == shape.media_extensions
            and 0 <= p.memory_gb - shape.memory_gb <= _MEMORY_DRIFT
        ]
        if not near:
            raise ProfileError(f"{self.name} has no MIG profile {name!r}")
        return min(near, key=lambda p: p.memory_gb - shape.memory_gb)

    def find(self, name: str, strict: bool = False) -> Profile | None:
        """Like ``profile`` but None when absent; ``strict`` accepts only names and known aliases."""
        if strict:
            return _profile_index(self).get(name)
        try:
            return self.profile(name)
        except ProfileError:
            return None

    @property
    def resources(self) -> tuple[str, ...]:
        return tuple(p.resource for p in self.profiles)


@cache
def _profile_index(model: GpuModel) -> Mapping[str, Profile]:
    index: dict[str, Profile] = {}
    for p in model.profiles:
        for n in (p.name, *p.aliases):
            index[n] = p
            index[n.replace("+me", ".me")] = p
    return index


def _seven_slice_model(name: str, family: str, memory_gb: int, sizes: Sequence[int],
                       aliases: Mapping[str, Sequence[str]] = ()) -> GpuModel:
    """A100/H100/H200/B200 geometry: 7 compute slices over 8 memory slices.

    ``sizes`` is the memory in GB of the 1g (1 slice), 1g/2g (2 slices), 3g/4g (4 slices) and 7g
    (8 slices) profiles, as the product's table names them.
    """
    m1, m2, m4, m8 = sizes
    aliases = dict(aliases)

    def p(name: str, g: int, ms: int, mem: int, n: int, places: Iterable[int], **kw: bool) -> Profile:
        return Profile(name, g, ms, mem, n, tuple(places), aliases=tuple(aliases.get(name, ())), **kw)

    profiles = (
        p(f"1g.{m1}gb", 1, 1, m1, 7, range(7)),
        p(f"1g.{m1}gb+me", 1, 1, m1, 1, range(7), media_extensions=True),
        p(f"1g.{m2}gb", 1, 2, m2, 4, (0, 2, 4, 6)),
        p(f"2g.{m2}gb", 2, 2, m2, 3, (0, 2, 4)),
        p(f"3g.{m4}gb", 3, 4, m4, 2, (0, 4)),
        p(f"4g.{m4}gb", 4, 4, m4, 1, (0,)),
        p(f"7g.{m8}gb", 7, 8, m8, 1, (0,), full_gpu=True),
    )
    return GpuModel(name, family, memory_gb, 7, 8, profiles, frozenset({frozenset({3, 4})}))


def _a30() -> GpuModel:
    profiles = (
        Profile("1g.6gb", 1, 1, 6, 4, (0, 1, 2, 3)),
        Profile("1g.6gb+me", 1, 1, 6, 1, (0, 1, 2, 3), media_extensions=True),
        Profile("2g.12gb", 2, 2, 12, 2, (0, 2)),
        Profile("2g.12gb+me", 2, 2, 12, 1, (0, 2), media_extensions=True),
        Profile("4g.24gb", 4, 4, 24, 1, (0,), full_gpu=True),
    )
    return GpuModel("A30-24GB", "A30", 24, 4, 4, profiles)


def _rtx_pro_6000() -> GpuModel:
    profiles = (
        Profile("1g.24gb", 1, 1, 24, 4, (0, 1, 2, 3)),
        Profile("1g.24gb+me", 1, 1, 24, 1, (0, 1, 2, 3), media_extensions=True),
        Profile("2g.48gb", 2, 2, 48, 2, (0, 2)),
        Profile("4g.96gb", 4, 4, 96, 1, (0,), full_gpu=True),
    )
    return GpuModel("RTX-PRO-6000-96GB", "RTX-PRO-6000", 96, 4, 4, profiles)


_A100_80_ALIASES = {"3g.40gb": ("3g.39gb",), "4g.40gb": ("4g.39gb",), "7g.80gb": ("7g.79gb",)}
_H100_94_ALIASES = {"3g.47gb": ("3g.46gb",), "4g.47gb": ("4g.46gb",), "7g.94gb": ("7g.93gb",)}

# Order matters for the label-less fallback in detect_gpu(): most common models first, and a model
# whose tables another shares (H800 = H100, A800 = A100, H20 = GH200) after it.
MODELS: tuple[GpuModel, ...] = (
    _seven_slice_model("A100-40GB", "A100", 40, (5, 10, 20, 40)),
    _seven_slice_model("A100-80GB", "A100", 80, (10, 20, 40, 80), _A100_80_ALIASES),
    _seven_slice_model("H100-80GB", "H100", 80, (10, 20, 40, 80), _A100_80_ALIASES),
    _seven_slice_model("H100-94GB", "H100", 94, (12, 24, 47, 94), _H100_94_ALIASES),
    _seven_slice_model("H200-141GB", "H200", 141, (18, 35, 71, 141),
                       {"7g.141gb": ("7g.140gb",)}),
    _seven_slice_model("B200-180GB", "B200", 180, (23, 45, 90, 180)),
    _a30(),
    _seven_slice_model("GH200-96GB", "GH200", 96, (12, 24, 48, 96)),
    _seven_slice_model("GH200-144GB", "GH200", 144, (18, 36, 72, 144)),
    _seven_slice_model("GB200-186GB", "GB200", 186, (23, 47, 93, 186)),
    _seven_slice_model("B300-288GB", "B300", 269, (34, 67, 135, 269)),
    _seven_slice_model("GB300-288GB", "GB300", 278, (35, 70, 139, 278)),
    _rtx_pro_6000(),
    _seven_slice_model("H20-96GB", "H20", 96, (12, 24, 48, 96)),
    _seven_slice_model("H800-80GB", "H800", 80, (10, 20, 40, 80), _A100_80_ALIASES),
    _seven_slice_model("H800-94GB", "H800", 94, (12, 24, 47, 94), _H100_94_ALIASES),
    _seven_slice_model("A800-40GB", "A800", 40, (5, 10, 20, 40)),
    _seven_slice_model("A800-80GB", "A800", 80, (10, 20, 40, 80), _A100_80_ALIASES),
)
MODELS_BY_NAME: Mapping[str, GpuModel] = {m.name: m for m in MODELS}


def model(name: str) -> GpuModel:
    """Look a model up by name, case-insensitively (``a100-40gb``); ProfileError lists the known ones."""
    for m in MODELS:
        if m.name.lower() == name.lower():
            return m
    raise ProfileError(f"unknown GPU model {name!r}; known: {', '.join(MODELS_BY_NAME)}")


# --------------------------------------------------------------------------------------------------
# GPU names as operators and GPU feature discovery write them

FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(m.family for m in MODELS))
# A family must stand alone in a product name: GH200 is not H200, and H200 is not H20.
_FAMILY_RE = re.compile(r"(?:^|[^A-Z0-9])(" + "|".join(sorted(map(re.escape, FAMILIES), key=len, reverse=True))
                        + r")(?=$|[^0-9])")
_SIZE_RE = re.compile(r"(?:^|[^A-Z0-9])(\d{2,3})GB?(?=$|[^A-Z0-9])")
# Products whose name carries no size but implies one (the NVL boards are the 94 GB H100/H800).
_IMPLIED_GB = {"H100-NVL": 94, "H800-NVL": 94}


@dataclass(frozen=True)
class ProductMatch:
    """What a product name says: its family (None when no catalog family appears in it), the GPU memory
    it implies (GB, None when unknown) and the catalog models it may be, best first."""

    family: str | None
    memory_gb: int | None
    models: tuple[GpuModel, ...]


def _normalise(product: str) -> str:
    return re.sub(r"[\s_]+", "-", product.strip().upper())


def _size_fits(m: GpuModel, gb: float) -> bool:
    """Drivers and NVML report a little less than the catalog size (97871 MiB on a 96 GB GH200)."""
    return abs(m.memory_gb - gb) <= max(3.0, 0.03 * m.memory_gb)


def match_product(product: str, memory_mib: object = None) -> ProductMatch:
    """The catalog models a ``nvidia.com/gpu.product`` value (and ``nvidia.com/gpu.memory``, MiB) may be.

    The memory label wins over sizes in the name: a GH200's ``480GB`` is the superchip's CPU memory.
    A size that fits no model of the family gives no model (an unknown variant, never a near miss);
    no size at all gives every model of the family.
    """
    name = _normalise(product)
    found = _FAMILY_RE.search(name)
    if not found:
        return ProductMatch(None, None, ())
    family = [m for m in MODELS if m.family == found.group(1)]
    size = _memory_label_gb(name, memory_mib)
    if size is not None:
        return ProductMatch(found.group(1), round(size), tuple(m for m in family if _size_fits(m, size)))
    in_name = [m for gb in _SIZE_RE.findall(name) for m in family if _size_fits(m, int(gb))]
    implied = next((gb for key, gb in _IMPLIED_GB.items() if key in name), None)
    if not in_name and implied is not None:
        in_name = [m for m in family if _size_fits(m, implied)]
    if in_name:
        return ProductMatch(found.group(1), in_name[0].memory_gb, tuple(dict.fromkeys(in_name)))
    return ProductMatch(found.group(1), family[0].memory_gb if len(family) == 1 else None, tuple(family))


def _memory_label_gb(name: str, memory_mib: object) -> float | None:
    """GB from the memory label; ignored under the ``single`` strategy, where it is the slice's memory."""
    if memory_mib is None or "-MIG-" in name:
        return None
    try:
        mib = float(str(memory_mib))
    except ValueError:
        return None
    return mib / 1024 if mib > 0 else None


def lookup_models(name: str) -> tuple[GpuModel, ...]:
    """What an operator may call a GPU: a model (``A100-40GB``), a family (``A100``: all its models) or
    a GPU feature discovery product (``NVIDIA-A100-SXM4-40GB``). ProfileError says what is accepted."""
    exact = [m for m in MODELS if m.name.lower() == name.strip().lower()]
    if exact:
        return tuple(exact)
    family = [m for m in MODELS if m.family == _normalise(name)]
    if family:
        return tuple(family)
    matched = match_product(name).models
    if matched:
        return matched
    raise ProfileError(f"unknown GPU {name!r}; give a model ({', '.join(MODELS_BY_NAME)}), a family "
                       f"({', '.join(FAMILIES)}) or a GPU feature discovery product such as NVIDIA-A100-SXM4-40GB")


# --------------------------------------------------------------------------------------------------
# Resource names (the device plugin's mixed strategy)


def profile_resource(profile_name: str) -> str:
    """``1g.10gb+me`` -> ``nvidia.com/mig-1g.10gb.me`` (the device plugin turns ``+`` into ``.``)."""
    return RESOURCE_PREFIX + profile_name.replace("+", ".")


def is_mig_resource(resource: str) -> bool:
    return resource.startswith(RESOURCE_PREFIX)


def resource_profile_name(resource: str) -> str:
    """``nvidia.com/mig-1g.10gb.me`` -> ``1g.10gb+me``; ProfileError when malformed."""
    if not is_mig_resource(resource):
        raise ProfileError(f"{resource!r} is not an nvidia.com/mig-* resource")
    name = resource[len(RESOURCE_PREFIX):]
    parse_profile_name(name)
    return name[:-3] + "+me" if name.endswith(".me") else name


def parse_profile_name(name: str) -> ProfileShape:
    """``3g.20gb`` or ``1g.10gb+me`` -> its shape; ProfileError says what is wrong with the name."""
    match = _PROFILE_RE.match(name)
    if not match:
        raise ProfileError(f"malformed MIG profile name {name!r} (expected like 1g.10gb or 1g.10gb+me)")
    return ProfileShape(int(match["g"]), int(match["mem"]), match["me"] is not None)


def resource_shape(resource: str) -> ProfileShape:
    """The shape a resource name promises, read from the name alone (no GPU model needed)."""
    return parse_profile_name(resource_profile_name(resource))


def canonical_shape(resource: str, gpu: GpuModel | None) -> ProfileShape:
    """The shape of a slice ``resource`` offered by a node of model ``gpu``: aliases and drift resolve to
    the catalog's memory, which is never less than the name's. What a *pod* asks for is the name's own
    shape (``resource_shape``), whatever the node."""
    if gpu is not None:
        found = gpu.find(resource_profile_name(resource))
        if found is not None:
            return found.shape
    return resource_shape(resource)


# --------------------------------------------------------------------------------------------------
# Compatibility


def can_substitute(requested: ProfileShape, offered: ProfileShape) -> bool:
    """May a slice of shape ``offered`` run a workload that asked for ``requested``?

    It must have at least the compute slices and the memory; a ``+me`` request needs media engines.
    """
    return (
        offered.compute_slices >= requested.compute_slices
        and offered.memory_gb >= requested.memory_gb
        and (offered.media_extensions or not requested.media_extensions)
    )


def waste(requested: ProfileShape, offered: ProfileShape) -> tuple[int, int, int]:
    """(extra compute slices, extra GB, unneeded media engines): substitutes are preferred smallest first.

    The last term keeps the one +me slice of a GPU for workloads that need it when a plain slice of
    the same size would do.
    """
    return (
        offered.compute_slices - requested.compute_slices,
        offered.memory_gb - requested.memory_gb,
        int(offered.media_extensions and not requested.media_extensions),
    )


def substitutes(gpu: GpuModel, profile_name: str) -> list[Profile]:
    """Profiles of ``gpu`` that may stand in for ``profile_name``, least waste first (itself excluded)."""
    want = gpu.profile(profile_name)
    found = [p for p in gpu.profiles if p != want and can_substitute(want.shape, p.shape)]
    return sorted(found, key=lambda p: (waste(want.shape, p.shape), p.name))


# --------------------------------------------------------------------------------------------------
# Layouts: which sets of GPU instances one GPU can hold


@dataclass(frozen=True)
class Placement:
    profile: Profile
    start: int

    @property
    def memory(self) -> range:
        return range(self.start, self.start + self.profile.memory_slices)


def layout_problems(gpu: GpuModel, placements: Sequence[Placement]) -> list[str]:
    """Every reason ``placements`` cannot coexist on one ``gpu`` (empty when it is a valid layout)."""
    problems: list[str] = []
    used: dict[int, Placement] = {}
    for pl in placements:
        if pl.start not in pl.profile.placements:
            problems.append(f"{pl.profile.name} cannot start at memory slice {pl.start} "
                            f"(valid: {list(pl.profile.placements)})")
        for s in pl.memory:
            if s in used:
                problems.append(f"{pl.profile.name}@{pl.start} overlaps {used[s].profile.name}@{used[s].start}")
                break
            used[s] = pl
    counts: dict[str, int] = {}
    for pl in placements:
        counts[pl.profile.name] = counts.get(pl.profile.name, 0) + 1
    for name, n in counts.items():
        limit = gpu.profile(name).max_instances
        if n > limit:
            problems.append(f"{n} x {name} exceeds its {limit} instances per GPU")
    compute = sum(pl.profile.compute_slices for pl in placements)
    if compute > gpu.compute_slices:
        problems.append(f"{compute} compute slices exceed the GPU's {gpu.compute_slices}")
    if sum(pl.profile.media_extensions for pl in placements) > 1:
        problems.append("more than one +me instance (one set of media engines per GPU)")
    sizes = {pl.profile.compute_slices for pl in placements}
    for pair in gpu.exclusive_pairs:
        if pair <= sizes:
            a, b = sorted(pair)
            problems.append(f"a {a}g and a {b}g instance cannot coexist on {gpu.name}")
    return problems


def pack(gpu: GpuModel, profile_names: Sequence[str]) -> list[Placement] | None:
    """A valid placement of ``profile_names`` on one ``gpu``, or None when no placement exists.

    Exhaustive backtracking, biggest first; a GPU holds at most 7 instances, so this is tiny.
    """
    wanted = sorted((gpu.profile(n) for n in profile_names), key=lambda p: -p.memory_slices)
    def place(i: int, chosen: list[Placement]) -> list[Placement] | None:
        if i == len(wanted):
            return list(chosen)
        for start in wanted[i].placements:
            chosen.append(Placement(wanted[i], start))
            if not layout_problems(gpu, chosen):
                done = place(i + 1, chosen)
                if done is not None:
                    return done
            chosen.pop()
        return None

    return place(0, [])


def fits_on_gpu(gpu: GpuModel, profile_names: Sequence[str]) -> bool:
    return pack(gpu, profile_names) is not None
