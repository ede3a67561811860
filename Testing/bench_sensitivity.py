"""How much the findings picks depend on the cues' anatomical scales.

Each named scale (a module attribute of VoteMILib: ``--scale MODULE.NAME[:UPPER]``, repeatable; by
default the body-cue and region scales below) is set to 70 % and 130 % of its value in turn, and findings
mode is scored on the chosen cases (hit_half of the top slice per plane, as ``votemi bench``), for the
design and the check half of the patient split (docs/benchmark.md) side by side. Thresholds on a 0..1 map
take an upper bound (``:1``) and stop there. A tuple scale is scaled element by element. A scale is set
where the engine reads it: its module, every module-level copy (``from .tissues import FAT_PLANE_HU``) and
every default argument that is the scale (``def f(rim_mm=RIM_MM)``), found in the source; a scale that only
feeds a value derived at import time, or that no function reads, stops the tool with the reason.

    python Testing/bench_sensitivity.py [DATA_DIR ...] [--scale cues.lung_nodule.BULK_MM] [--factors 0.7,1.3]
        [--regions body|all|head,chest,...]

With ``--synthetic KIND`` the cases are synthetic lesions put into every case of the folders instead (the
hosts of ``votemi bench --synthetic``, e.g. ``../shared/data/abdomen`` for organ lesions), the first site
of each site class and size, scored per host; sites are drawn once, with the scales as shipped.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "VoteMI"))

from VoteMILib.bench import score_slice, section_areas  # noqa: E402
from VoteMILib.bench_split import HALVES, half_of, region_of  # noqa: E402
from VoteMILib.datasets import bench_cases, load_mask  # noqa: E402
from VoteMILib.geometry import PLANES, plane_geometry  # noqa: E402
from VoteMILib.selection import select_slices  # noqa: E402
from VoteMILib.volumes import load_volume  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
#: The scales varied by default: "module.NAME" of VoteMILib, and an upper bound for 0..1 thresholds.
SCALES = (
    ("cues.tissue_contrast.BODY_RIM_MM", None),
    ("cues.lung_nodule.NODULE_RADII_MM", None),
    ("cues.lung_nodule.NODULE_CONTRAST_HU", None),
    ("cues.lung_nodule.NODULE_STRENGTH", 1.0),
    ("cues.lung_nodule.MIRROR_MM", None),
    ("cues.lung_nodule.BULK_MM", None),
    ("cues.lung_nodule.LUNG_NODULE_MIN", 1.0),
    ("cues.tissue_contrast.BLOB_RADII_MM", None),
    ("cues.tissue_contrast.MIN_CONTRAST_HU", None),
    ("cues.tissue_contrast.MIN_CONTRAST_MRI", None),
    ("cues.regions.CHEST_WALL_MM", None),
    ("cues.regions.CHEST_LUNG_FRACTION", None),
    ("cues.regions.LUNG_PARENCHYMA_HU", None),
    ("cues.regions.LUNG_ENCLOSED_SHARE", 1.0),
    ("cues.tissues.FAT_PLANE_HU", None),
    ("cues.tissues.SKIN_MM", None),
    ("cues.tissues.SUBCUTANEOUS_MM", None),
    ("cues.tissues.FAT_SUPPRESSED_SHARE", 1.0),
    ("cues.mass.MASS_MIN_DEPTH_MM", None),
    ("cues.mass.MASS_DEPTH_MM", None),
    ("cues.mass.SOLID_TISSUE_HU", None),
)


def parse_scale(text: str) -> tuple:
    """``MODULE.NAME`` or ``MODULE.NAME:UPPER`` -> ("MODULE.NAME", upper or None)."""
    name, _, upper = text.partition(":")
    if "." not in name:
        raise argparse.ArgumentTypeError(f"'{text}': give MODULE.NAME (a module of VoteMILib), e.g. cues.lung_nodule.BULK_MM")
    try:
        return name, float(upper) if upper else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': the upper bound after ':' must be a number") from None


def resolve(name: str):
    """The module and attribute name of ``MODULE.NAME`` (MODULE relative to VoteMILib); a clear error if absent."""
    module_name, _, attribute = name.rpartition(".")
    try:
        module = importlib.import_module(f"VoteMILib.{module_name}")
    except ImportError as error:
        raise SystemExit(f"scale {name}: no module VoteMILib.{module_name} ({error})") from None
    if not hasattr(module, attribute):
        raise SystemExit(f"scale {name}: VoteMILib.{module_name} has no attribute {attribute}")
    return module, attribute


def module_name_of(path: Path) -> str:
    """``VoteMILib.cues.mass`` for VoteMI/VoteMILib/cues/mass.py."""
    parts = path.relative_to(REPO / "VoteMI").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_module(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a ``from ... import`` statement in ``package`` (a module's package) imports from."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def names_the_scale(node, local_names: set, module_aliases: set, attribute: str) -> bool:
    """Whether an expression reads the scale: by a name it is bound to here, or as ``module.NAME``."""
    return any((isinstance(n, ast.Name) and n.id in local_names)
               or (isinstance(n, ast.Attribute) and n.attr == attribute and isinstance(n.value, ast.Name)
                   and n.value.id in module_aliases) for n in ast.walk(node))


def bindings(name: str):
    """Where the value of scale ``name`` (``MODULE.NAME`` of VoteMILib) is bound in the engine's source.

    Returns
    -------
    copies : list of (module name, attribute)
        Module-level ``from module import NAME [as alias]`` in other modules: set with the defining module's.
    defaults : list of (module name, function path, positional index or keyword name)
        Default arguments that are the scale itself (``def f(x=NAME)``), bound when the module was imported.
    read : bool
        Whether any function reads it at call time (through its module, a copy, or a default).

    Raises
    ------
    SystemExit
        When a value is derived from the scale at import time (``OTHER = NAME * 2``, ``def f(x=NAME / 2)``, a
        class attribute): varying the scale would not vary what the code uses.
    """
    defining, _, attribute = f"VoteMILib.{name}".rpartition(".")
    copies, defaults, read = [], [], False
    for path in sorted((REPO / "VoteMI" / "VoteMILib").rglob("*.py")):
        here = module_name_of(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        local = {attribute} if here == defining else set()
        aliases = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                package = here if path.stem == "__init__" else here.rpartition(".")[0]
                source = imported_module(node, package)
                for alias in node.names:
                    if source == defining and alias.name == attribute:
                        local.add(alias.asname or alias.name)
                        copies.append((here, alias.asname or alias.name))
                    elif f"{source}.{alias.name}" == defining:
                        aliases.add(alias.asname or alias.name)
        if not local and not aliases:
            continue
        for node in tree.body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None \
                    and names_the_scale(node.value, local, aliases, attribute):
                raise SystemExit(f"scale {name}: {here} line {node.lineno} derives a value from it at import "
                                 "time; vary that value instead")
        read |= _scan_functions(tree.body, here, (), local, aliases, attribute, defaults, name)
    if not read:
        raise SystemExit(f"scale {name}: no function of VoteMILib reads it; varying it would change nothing")
    return [c for c in copies if c[0] != defining], defaults, read


def _scan_functions(body, here, prefix, local, aliases, attribute, defaults, name) -> bool:
    """Record the module-level and class-level functions' defaults that are the scale; whether any code reads it."""
    read = False
    for node in body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.Assign, ast.AnnAssign)) and item.value is not None \
                        and names_the_scale(item.value, local, aliases, attribute):
                    raise SystemExit(f"scale {name}: class {node.name} of {here} (line {item.lineno}) binds it "
                                     "when the module is imported")
            read |= _scan_functions(node.body, here, prefix + (node.name,), local, aliases, attribute, defaults,
                                    name)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            pairs = [(i, d) for i, d in enumerate(node.args.defaults)]
            pairs += [(arg.arg, d) for arg, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
            for key, default in pairs:
                if not names_the_scale(default, local, aliases, attribute):
                    continue
                if not (isinstance(default, ast.Name)
                        or (isinstance(default, ast.Attribute) and default.attr == attribute)):
                    raise SystemExit(f"scale {name}: {here}.{'.'.join(prefix + (node.name,))} derives a default "
                                     f"from it (line {default.lineno}); vary that value instead")
                defaults.append((here, prefix + (node.name,), key))
                read = True
            read |= any(names_the_scale(statement, local, aliases, attribute) for statement in node.body)
    return read


def set_scale(module, attribute, value, copies, defaults) -> None:
    """Set a scale where the engine reads it: its module, every copy, every default bound to it."""
    setattr(module, attribute, value)
    for here, alias in copies:
        setattr(importlib.import_module(here), alias, value)
    for here, function_path, key in defaults:
        function = importlib.import_module(here)
        for part in function_path:
            function = getattr(function, part)
        function = getattr(function, "__func__", function)
        if isinstance(key, int):
            values = list(function.__defaults__)
            values[key] = value
            function.__defaults__ = tuple(values)
        else:
            function.__kwdefaults__ = {**function.__kwdefaults__, key: value}


def scaled(value, factor: float, upper):
    if isinstance(value, tuple):
        return tuple(scaled(v, factor, upper) for v in value)
    value = value * factor
    return min(value, upper) if upper is not None else value


def load_cases(folders, regions):
    """The cases with masks in the split whose scanned region is wanted, loaded once, with their lesion
    profiles per plane: (name, half, volume, profiles)."""
    loaded = []
    for case in bench_cases(folders):
        region = region_of(case.name)
        if not case.mask or half_of(case.name) not in HALVES:
            continue
        if not (regions == "all" or (regions == "body" and region != "head") or region in regions):
            continue
        volume = load_volume(case.image)
        lesion_kji = load_mask(case.mask, volume)
        profiles = {}
        for plane in PLANES:
            positions = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane).positions_mm
            profiles[plane] = (section_areas(volume, lesion_kji, plane), positions)
        loaded.append((case.name, half_of(case.name), volume, profiles))
    return loaded


def hit_half(cases) -> dict:
    """Per case and plane: 1 when the top findings slice holds half of the largest lesion section; the cue too."""
    out = {}
    for name, _, volume, profiles in cases:
        result = select_slices(volume, top_k=1, mode="findings")
        out[name] = {plane: (score_slice(result.planes[plane].selected[0].index, *profiles[plane])["hit_half"],
                             result.planes[plane].cue) for plane in PLANES}
    return out


def load_synthetic(folders, kind: str):
    """(host name, prepared scan, sites) per case of the folders: one site per site class and size."""
    from VoteMILib import synthetic

    hosts = []
    for case in bench_cases(folders):
        scan = synthetic.prepare_scan(case)
        if kind not in synthetic.kinds_for(scan.region):
            continue
        sites = []
        for diameter in synthetic.DIAMETERS_MM[kind]:
            first = {}
            for site in synthetic.scan_sites(scan, kind, diameter):
                first.setdefault(site.name.split()[0], site)
            sites += first.values()
        hosts.append((case.name, scan, sites))
    return hosts


def synthetic_hit_half(hosts) -> dict:
    """Per host: per lesion and plane, (hit_half of the top findings slice, cue)."""
    from VoteMILib import synthetic

    out = {}
    for name, scan, sites in hosts:
        for site in sites:
            row = synthetic.try_site(scan, site)
            out[f"{name} {2 * site.radius_mm:.0f} mm "
                f"{site.name}"] = {plane: (row["planes"][plane]["hit_half"], row["planes"][plane]["cue"])
                                   for plane in PLANES}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dirs", nargs="*", default=[str(SHARED), str(SHARED / "sarcoma")],
                        help="bench folders (default: ../shared/data and ../shared/data/sarcoma)")
    parser.add_argument("--scale", action="append", type=parse_scale, dest="scales", metavar="MODULE.NAME[:UPPER]",
                        help="a scale to vary (repeatable; default: the body-cue and region scales)")
    parser.add_argument("--factors", default="0.7,1.3")
    parser.add_argument("--regions", default="body",
                        help="body (every region but the head, default), all, or scanned regions comma-separated")
    parser.add_argument("--synthetic", metavar="KIND",
                        help="score synthetic lesions of KIND put into the folders' cases instead, per host")
    args = parser.parse_args(argv)
    factors = [float(f) for f in args.factors.split(",")]
    regions = args.regions if args.regions in ("all", "body") else tuple(args.regions.split(","))
    scales = [(resolve(name), name, upper, bindings(name)) for name, upper in (args.scales or SCALES)]

    started = time.perf_counter()
    if args.synthetic:
        hosts = load_synthetic(args.data_dirs, args.synthetic)
        groups = [name for name, _, _ in hosts]
        names = {name: [] for name in groups}
        for name, _, sites in hosts:
            print(f"{name}: {len(sites)} {args.synthetic} lesions")

        def score():
            scores = synthetic_hit_half(hosts)
            for name in groups:
                names[name] = [key for key in scores if key.startswith(name + " ")]
            return scores
    else:
        cases = load_cases(args.data_dirs, regions)
        groups = HALVES
        names = {half: [name for name, h, _, _ in cases if h == half] for half in HALVES}
        for half in HALVES:
            print(f"{half}: {len(names[half])} cases: {', '.join(names[half]) or 'none'}")

        def score():
            return hit_half(cases)
    reference = score()
    columns = [f"{group} {plane}" for group in groups for plane in PLANES]
    print("\nhit_half of the findings top pick per half and plane; the picks whose hit_half or cue changed:")
    print("| scale | value | " + " | ".join(columns) + " | hit_half or cue changed |")
    print("|" + "---|" * (len(columns) + 3))

    def row(label, value, scores):
        means = [np.mean([scores[n][p][0] for n in names[group]]) if names[group] else float("nan")
                 for group in groups for p in PLANES]
        changed = [f"{n} {p} ({scores[n][p][1]})" for n in scores for p in PLANES if scores[n][p] != reference[n][p]]
        print(f"| {label} | {value} | " + " | ".join(f"{m:.2f}" for m in means)
              + f" | {', '.join(changed) or 'none'} |", flush=True)

    row("(as shipped)", "", reference)
    for (module, attribute), name, upper, (copies, defaults, _) in scales:
        original = getattr(module, attribute)
        try:
            for factor in factors:
                value = scaled(original, factor, upper)
                set_scale(module, attribute, value, copies, defaults)
                shown = (", ".join(f"{v:g}" for v in np.round(value, 2)) if isinstance(value, tuple)
                         else f"{value:.4g}")
                row(f"{name} x{factor:g}", shown, score())
        finally:
            set_scale(module, attribute, original, copies, defaults)
    print(f"{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
