"""How far a document travels through the code: modules ("rooms") a call enters, and how often it
climbs back up into a module it came from (a call into a module that is already on the call stack
below the caller's).

Traces two walks on the embedded tiny-mamba, with the public API only (so the same script measures
any version of the package):

* the profile result through ``make_plan`` (``--no-measure``: the plan's search, not the measurer);
* the plan through ``apply_plan`` (a saved, reloadable checkpoint).

Module bodies run by a first import during the walk (a lazy face loading its module) are skipped:
they are the import machinery, not the calls a reader follows.

Usage::

    python examples/module_walk.py            # prints one line per walk
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from typing import Any, Callable

import torch


def walk(fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """Run ``fn`` under a profiler hook; count module crossings inside ssm_profile."""
    stack: list[str | None] = []
    entered: Counter[str] = Counter()
    climbs = crossings = 0
    seen_code: set[Any] = set()
    reading: list[str] = []  # module of each function met for the first time, in order

    importing = 0  # depth inside a module body being imported: import machinery, not the call structure

    def hook(frame, event, arg):  # noqa: ARG001 - sys.setprofile's signature
        nonlocal climbs, crossings, importing
        if event == "call" and (importing or frame.f_code.co_name == "<module>"):
            importing += 1
            return
        if event == "return" and importing:
            importing -= 1
            return
        if event == "call":
            module = frame.f_globals.get("__name__", "")
            module = module if module.startswith("ssm_profile") else None
            caller = next((m for m in reversed(stack) if m is not None), None)
            if module is not None and frame.f_code not in seen_code:
                seen_code.add(frame.f_code)
                if not reading or reading[-1] != module:
                    reading.append(module)
            if module is not None and module != caller:
                crossings += 1
                entered[module] += 1
                if module in stack:
                    climbs += 1
            stack.append(module)
        elif event == "return" and stack:
            stack.pop()

    sys.setprofile(hook)
    try:
        value = fn()
    finally:
        sys.setprofile(None)
    read_entries = Counter(reading)
    return value, {"rooms": len(entered), "climbs": climbs, "crossings": crossings,
                   "most_entered": entered.most_common(3),
                   "read_rooms": len(read_entries), "reread": len(reading) - len(read_entries), "read_entries": read_entries.most_common(3)}


def main() -> None:
    import ssm_profile as sp

    torch.manual_seed(0)
    torch.set_num_threads(1)
    loaded = sp.load_model("tiny-mamba")
    settings = sp.ProfileSettings(criteria=["magnitude"], layer_criterion="magnitude", sparsities=[0.5],
                                  per_layer=False, targets=["in_proj", "unit:state"])
    result = sp.profile_model(loaded, sp.DataSpec(nsamples=4, eval_samples=4, seqlen=64), settings)
    plan, plan_walk = walk(lambda: sp.make_plan(result, sp.PlanRequest(metric="params", ratio=0.05, measure=False)))
    with tempfile.TemporaryDirectory() as out:
        _, apply_walk = walk(lambda: sp.apply_plan(loaded, plan, f"{out}/pruned"))
    print(f"ssm-profile {sp.__version__}")
    for name, w in (("result -> make_plan", plan_walk), ("plan -> apply_plan", apply_walk)):
        top = ", ".join(f"{m.removeprefix('ssm_profile.')} x{n}" for m, n in w["most_entered"])
        print(f"{name}: {w['rooms']} modules, {w['climbs']} climbs back up, {w['crossings']} crossings "
              f"(most entered: {top})")
        again = ", ".join(f"{m.removeprefix('ssm_profile.')} x{n}" for m, n in w["read_entries"])
        print(f"  read in call order, each function once: {w['read_rooms']} modules, "
              f"{w['reread']} returns to a module already read (most read: {again})")


if __name__ == "__main__":
    main()
