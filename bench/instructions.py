"""The report of bench/instructions: instructions per callback from callgrind
profiles, per system and component, and where the bridge executes more than its
parts together.

    python3 bench/instructions.py "NAME CALLBACKS PROFILE" ...

The first system is the bridge, the others its parts. Reads each profile's
self cost per function (callgrind's `Ir`, instructions executed in user space).
"""

import re
import sys
from collections import Counter

# Components by function name, first match wins: what a reader of the profile
# would call the work. librdkafka and its codecs are linked into the binaries.
COMPONENTS = [
    ("the crate's own code", r"^css_kafka_bridge::"),
    ("compression (lz4)", r"^LZ4|^XXH"),
    ("librdkafka", r"^rd_|^rdkafka::|^crc32|^rd_kafka"),
    ("JSON (serde_json)", r"serde_json|^serde_core::|^serde::"),
    ("hashing (SHA-256, MD5)", r"^sha2::|^md5::|^digest::"),
    ("HTTP (hyper, axum, http)", r"^hyper|^axum|^http::|^http_body|^httparse|^tower"),
    ("async runtime (tokio)", r"^tokio::|^futures|^mio::"),
    ("metrics (prometheus-client)", r"^prometheus_client::"),
    ("allocator (jemalloc)", r"_rjem_|^malloc$|^free$|^calloc$|^realloc$|^sdallocx$|^tcache|^je_|^arena"),
    ("memset, memcpy", r"^__mem(set|cpy|move|cmp)"),
    ("locks (libc)", r"pthread_mutex|pthread_cond|^__lll_|^futex"),
]


def self_costs(path):
    """Instructions per function, excluding what it calls."""
    names, costs = {}, Counter()
    function, in_call = None, False

    def name(compressed):
        match = re.match(r"\((\d+)\)(?: (.*))?", compressed)
        if not match:
            return compressed
        if match.group(2):
            names[match.group(1)] = match.group(2)
        return names.get(match.group(1), compressed)

    with open(path, errors="replace") as profile:
        for line in profile:
            line = line.rstrip("\n")
            if line.startswith("fn="):
                function = name(line[3:])
            elif line.startswith(("cfn=", "cfni=")):
                name(line.split("=", 1)[1])
            elif line.startswith("calls="):
                in_call = True
            elif line[:1].isdigit() or line[:1] in ("+", "-", "*"):
                # The line after `calls=` is the callee's inclusive cost.
                if in_call:
                    in_call = False
                    continue
                fields = line.split()
                if len(fields) > 1 and function is not None:
                    costs[function] += int(fields[1])
    return costs


def component(function):
    for label, pattern in COMPONENTS:
        if re.search(pattern, function):
            return label
    return "other (libc, std, kernel entry, ...)"


def per_callback(costs, callbacks):
    return {function: cost / callbacks for function, cost in costs.items()}


def main(systems):
    loaded = []
    for system in systems:
        name, callbacks, path = system.split(" ", 2)
        callbacks = int(callbacks)
        if callbacks <= 0:
            sys.exit(f"{name}: no callback answered, nothing to divide by")
        loaded.append((name, callbacks, per_callback(self_costs(path), callbacks)))
    bridge_name, _, bridge = loaded[0]
    parts = Counter()
    for _, _, costs in loaded[1:]:
        parts.update(costs)

    total = {name: sum(costs.values()) for name, _, costs in loaded}
    parts_total = sum(parts.values())
    names = [name for name, _, _ in loaded]
    print("| | " + " | ".join(names) + " | parts together | bridge − parts |")
    print("|---|" + "---:|" * (len(names) + 2))
    print(
        "| callbacks measured | "
        + " | ".join(f"{callbacks:,}" for _, callbacks, _ in loaded)
        + " | | |"
    )
    by_component = {
        name: Counter({component(f): 0 for f in costs}) for name, _, costs in loaded
    }
    for name, _, costs in loaded:
        for function, cost in costs.items():
            by_component[name][component(function)] += cost
    parts_by_component = Counter()
    for name in names[1:]:
        parts_by_component.update(by_component[name])
    labels = [label for label, _ in COMPONENTS] + ["other (libc, std, kernel entry, ...)"]
    for label in labels:
        row = [by_component[name].get(label, 0) for name in names]
        if max(row) < 50 and parts_by_component.get(label, 0) < 50:
            continue
        gap = by_component[bridge_name].get(label, 0) - parts_by_component.get(label, 0)
        print(
            f"| {label} | "
            + " | ".join(f"{value:,.0f}" for value in row)
            + f" | {parts_by_component.get(label, 0):,.0f} | {gap:+,.0f} |"
        )
    print(
        "| **instructions per callback** | "
        + " | ".join(f"**{total[name]:,.0f}**" for name in names)
        + f" | **{parts_total:,.0f}** | **{total[bridge_name] - parts_total:+,.0f}** |"
    )
    # Callgrind counts each iteration of a `rep stos`/`rep movs` as an
    # instruction: a memset of 64 KiB counts 65,536, a few thousand cycles.
    bulk = "memset, memcpy"
    lean = {name: total[name] - by_component[name].get(bulk, 0) for name in names}
    lean_parts = parts_total - parts_by_component.get(bulk, 0)
    print(
        "| without memset, memcpy | "
        + " | ".join(f"{lean[name]:,.0f}" for name in names)
        + f" | {lean_parts:,.0f} | {lean[bridge_name] - lean_parts:+,.0f} |"
    )
    print()
    print(
        f"- {bridge_name} against its parts ({' + '.join(names[1:])}): "
        f"**{total[bridge_name] / parts_total:.2f} ×** the instructions per callback; "
        f"**{lean[bridge_name] / lean_parts:.2f} ×** without memset and memcpy, whose "
        "`rep stos`/`rep movs` callgrind counts byte by byte (a memset of 64 KiB: "
        "65,536 instructions, a few thousand cycles)"
    )
    print()
    print(f"Functions where the {bridge_name} executes more than its parts together, per callback:")
    print()
    print("| extra | bridge | parts | function |")
    print("|---:|---:|---:|---|")
    gaps = sorted(
        ((bridge.get(f, 0) - parts.get(f, 0), f) for f in set(bridge) | set(parts)),
        reverse=True,
    )
    for gap, function in gaps[:25]:
        if gap < 20:
            break
        shown = function if len(function) <= 110 else function[:107] + "..."
        print(f"| {gap:,.0f} | {bridge.get(function, 0):,.0f} | {parts.get(function, 0):,.0f} | `{shown}` |")


if __name__ == "__main__":
    main(sys.argv[1:])
