"""``attnbench backends``: the registered backends, their plugins, parameters and availability."""

from __future__ import annotations

import argparse
import json

from .options import registry as _registry


def run(args: argparse.Namespace) -> int:
    from ..listing_cache import cached_listing

    if _checks_availability(args):
        text = _backends_text(args)[0]
    else:
        text = cached_listing("backends-json" if args.json else "backends", lambda: _backends_text(args),
                              refresh=args.refresh)
    print(text, end="")
    return 0


def _checks_availability(args: argparse.Namespace) -> bool:
    """``--check``, or a device or dtype to check on: availability is asked, never cached."""
    return bool(args.check or args.device or args.dtype)


def _backends_text(args: argparse.Namespace) -> tuple[str, bool]:
    from ..backends.contract import ask_unavailable_reason
    from ..devices import backend_devices, dtype_name, parse_placement, placement_reason

    placement = parse_placement(args.device or "cpu", args.dtype or "float32")
    check = _checks_availability(args)
    registry = _registry()
    listing = []
    for name in sorted(registry.backends):
        entry = registry.backends[name]
        # the class's declared devices and dtypes first (instances may narrow them per parameter)
        reason = (placement_reason(entry.cls, placement) or ask_unavailable_reason(entry.cls)) if check else None
        listing.append({"name": name, "description": entry.cls.description, "plugin": entry.plugin.name,
                        "devices": list(backend_devices(entry.cls)),
                        "dtypes": [dtype_name(d) for d in getattr(entry.cls, "dtypes", ())],
                        "distribution": entry.plugin.dist, "version": entry.plugin.version,
                        "params": [{"name": p.name, "type": p.type.__name__, "default": p.default, "help": p.help,
                                    "summary": p.describe()} for p in entry.cls.params],
                        "available": (reason is None) if check else None, "reason": reason})
    failures = [{"plugin": f.plugin, "distribution": f.dist, "error": f.error} for f in registry.failures]
    if args.json:
        return json.dumps({"backends": listing, "failed_plugins": failures, "device": placement.device,
                           "dtype": placement.dtype}, indent=2, default=str) + "\n", not failures
    lines = [f"availability on {placement.device}, {placement.dtype} (--device/--dtype to ask about another)"
             if check else "availability not checked (--check; --device/--dtype check on that device and dtype)"]
    for item in listing:
        status = ("availability not checked" if item["available"] is None
                  else "available" if item["available"] else f"UNAVAILABLE: {item['reason']}")
        lines.append(f"{item['name']}  —  {item['description']}")
        lines.append(f"    plugin {item['plugin']} ({item['distribution']} {item['version']}); {status}")
        lines.append(f"    devices {', '.join(item['devices'])}; dtypes {', '.join(item['dtypes'])}")
        for param in item["params"]:
            lines.append(f"    {param['summary']}" + (f"  — {param['help']}" if param["help"] else ""))
    for failure in failures:
        lines.append(f"failed plugin {failure['plugin']} ({failure['distribution']}): {failure['error']}")
    return "\n".join(lines) + "\n", not failures


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``backends`` command's options."""
    p = sub.add_parser("backends", help="list backends with plugin, version and parameters (availability with --check)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--check", action="store_true",
                   help="also check whether each backend can run here (builds kernels, may take seconds)")
    p.add_argument("--refresh", action="store_true", help="rebuild the listing cached for this environment")
    p.add_argument("--device", metavar="cpu|cuda[:N]", help="availability on this device (default cpu; implies --check)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="availability in this dtype "
                   "(default float32; implies --check)")
    p.set_defaults(func=run)
