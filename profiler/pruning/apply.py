"""Apply a pruning plan to a model and save the pruned checkpoint.

``apply_plan(loaded, plan, output_dir)`` executes every action of a plan (a
:class:`ssm_profile.documents.Plan`, or its file) on the in-memory model of ``loaded``, which is pruned in
place (load it fresh; the files it came from are never written), and saves the result with
``save_pretrained`` (safetensors), the tokenizer and a ``pruning.json`` that records what was
done (:class:`ssm_profile.documents.PruningRecord`). The output directory is written through :func:`ssm_profile.base.io.atomic_directory`: it appears
only when everything succeeded.

Execution
---------
* Element actions (``in_proj``, ``A_log``, ... with ``structure`` ``unstructured`` or ``N:M``):
  element scores are recomputed from the action's criterion on the plan's calibration data
  (``plan.data``, deterministic for a fixed seed) on the dense model with the profile's recipe
  (:class:`ssm_profile.profiling.recipe.RunRecipe`: statistics batch size, kernels), turned into keep-masks
  with the same code the profiler used, and written as zeros.
* Unit actions (``unit:channel``, ``unit:state``, ...): every listed unit (``unit_indices``) is
  first zeroed across all its coupled tensors. Where the action asks for ``execution: "slice"``
  the zeroed units are then sliced out by :func:`ssm_profile.pruning.surgery.slice_cuts`, the one decision
  the planner also asked (so a plan's "slice" is what apply does); it keeps a kind as zeros, with a
  note saying why, when slicing would change the model (a norm over the cut dimension, e.g.
  FalconMamba's B/C/dt RMSNorm), layers cut different numbers of units, or a stock config cannot
  express the result. Either way the logits are those of the zeroed model, except for Mamba-2's
  gated norm after a head slice: its eps term, which the planner measured in the sliced form
  (:mod:`ssm_profile.model.norms`).
* A tensor that two actions cut and a reconstructing criterion (OBS) rewrites is solved once on the
  union of their masks (:meth:`ssm_profile.profiling.sensitivity.Scorer.solve_jointly`), as the
  planner measured it.

* Layer actions (``structure: "layers"``, execution ``remove``): the decoder layers are removed after
  every other action (so every action addresses the plan's layer numbers) by
  :func:`ssm_profile.pruning.layers.remove_checked`, which refuses in one line a model transformers
  could not describe or run without them; the zeroed tensors the record lists are renamed to the
  reduced model's layer numbers.

The output always reloads with plain ``transformers.AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from .. import __version__
from ..model.arch import MixerInfo, find_mixers
from ..documents import (LAYERS, PRUNING_FILE, VALIDATION_FILE, ExecutedAction, ModelOrigin, ParameterCounts, Plan,
                         PlanAction, PrunedFrom, PrunedOutput, PruningRecord, PruningSummary, RunData, SlicedUnits,
                         Totals, TotalsChange, as_plan, check_promise_kept, load_plan)
from ..base.errors import PlanError, SSMProfileError
from ..base.io import atomic_directory, write_json_atomic
from ..criteria.masks import Pruning, Target, pruned_count, unit_mask, write_cut
from ..profiling.recipe import RunRecipe, needs_of
from ..model.resolve import LoadedModel, check_vocabulary
from ..validation.check import ValidationOptions, count_parameters, validate as run_validation

if TYPE_CHECKING:
    from ..model.analysis import AnalysisTotals

Progress = Callable[[int, int, str], None]
PRUNING_SCHEMA_VERSION = 1


# --------------------------------------------------------------------------------------------
# execution


def _mixers_by_layer(model: torch.nn.Module) -> dict[int, MixerInfo]:
    return {m.layer: m for m in find_mixers(model)}


def _covered(layers: list[int] | None, by_layer: dict[int, MixerInfo], where: str) -> list[MixerInfo]:
    if not layers:
        return list(by_layer.values())
    missing = [layer for layer in layers if layer not in by_layer]
    if missing:
        raise PlanError(f"{where}: layer(s) {missing} have no SSM mixer in this model (it has {sorted(by_layer)})")
    return [by_layer[layer] for layer in layers]


def _dense_cuts(loaded: LoadedModel, plan: Plan, element_actions: list[tuple[int, PlanAction]],
                unit_picks: list[tuple[int, str, MixerInfo, list[int]]],
                note: Progress) -> tuple[dict[int, Pruning], Pruning, dict[str, Any]]:
    """Every element action's cut, and all actions' cuts together with the values reconstructing
    criteria (OBS, FLAP) rewrite, computed on the dense model as the profile computed them (a tensor
    that two actions cut solved once on the union of their masks, as the planner measured it)."""
    criteria = {a.criterion for _, a in element_actions}
    criteria |= {plan.actions[i].criterion for i, *_ in unit_picks if _reconstructs(plan.actions[i].criterion)}
    if not criteria:
        return {}, Pruning({}, {}), {}
    recipe = RunRecipe.of_plan(plan)
    with recipe.installed(loaded.model):
        return _score_cuts(loaded, recipe, sorted(criteria), element_actions, unit_picks, plan, note)


def _reconstructs(criterion: str) -> bool:
    """Whether a unit action's criterion rewrites kept values (an unknown name only listed the units: no)."""
    from ..criteria import available, get

    return criterion in available() and get(criterion).reconstructs


def _score_cuts(loaded: LoadedModel, recipe: RunRecipe, criteria: list[str],
                element_actions: list[tuple[int, PlanAction]], unit_picks: list[tuple[int, str, MixerInfo, list[int]]],
                plan: Plan, note: Progress) -> tuple[dict[int, Pruning], Pruning, dict[str, Any]]:
    from ..criteria import NotApplicable
    from ..calibration.data import load_dataset
    from ..profiling.sensitivity import TrialSpec, relative

    model = loaded.model
    needs = needs_of(criteria)
    described: dict[str, Any] = {}
    calibration = None
    if needs:  # data-free criteria (magnitude, random, horizon) need no tokenizer nor data
        note(0, 1, "calibration data")
        check_vocabulary(loaded.tokenizer, loaded.model)  # one line, not an IndexError in the embedding
        dataset = load_dataset(loaded.tokenizer, recipe.data)
        described, calibration = dataset.describe(), dataset.calibration
        note(0, 1, "calibration statistics")
    scorer = recipe.scorer(model, recipe.statistics(model, calibration, needs), criteria)
    by_layer = _mixers_by_layer(model)
    cuts: dict[int, Pruning] = {}
    for i, action in element_actions:
        where = f"plan action {i} ({action.target})"
        mixers = _covered(action.layers, by_layer, where)
        trial = TrialSpec(action.target, action.criterion, float(action.sparsity))
        try:
            cuts[i] = scorer.prune(trial, mixers, action.structure)
        except NotApplicable as err:
            raise PlanError(f"{where}: {action.criterion} cannot score it ({err})") from None
        except ValueError as err:
            raise PlanError(f"{where}: {err}") from None
    unit_parts: list[Pruning] = []
    for i, kind, m, ids in unit_picks:
        criterion = plan.actions[i].criterion
        if ids:
            mask = unit_mask(m, m.unit_family(kind), torch.tensor(ids))
            unit_parts.append(scorer.reconstruction(criterion, m, relative(m, mask)) if _reconstructs(criterion)
                              else Pruning(mask, {}))
    return cuts, scorer.solve_jointly([*cuts.values(), *unit_parts], list(by_layer.values())), described


def _unit_ids(action: PlanAction, mixer: MixerInfo, kind: str, where: str) -> list[int]:
    from .surgery import unit_id_list

    ids = (action.unit_indices or {}).get(str(mixer.layer), [])
    try:
        return unit_id_list(ids, mixer.unit_family(kind), f"layer {mixer.layer}")
    except ValueError as err:  # out-of-range or repeated ids: the plan is wrong, not the code
        raise PlanError(f"{where}: {err}") from None


def _unit_picks(model: torch.nn.Module,
                unit_actions: list[tuple[int, PlanAction]]) -> list[tuple[int, str, MixerInfo, list[int]]]:
    """(action index, unit kind, mixer, unit ids) of every unit action and layer it covers."""
    by_layer = _mixers_by_layer(model)
    picked: list[tuple[int, str, MixerInfo, list[int]]] = []
    for i, a in unit_actions:
        where = f"plan action {i} ({a.target})"
        kind = a.unit_kind or Target.parse(a.target).part
        listed = [int(k) for k in (a.unit_indices or {})]
        layers = sorted(set(a.layers or []) | set(listed)) if listed else a.layers
        covered = {m.layer: m for m in _covered(layers, by_layer, where)}
        for m in covered.values():
            if kind not in m.unit_families():
                raise PlanError(f"{where}: {m.kind} mixers have no '{kind}' units "
                                f"(they have {', '.join(m.unit_families())})")
            picked.append((i, kind, m, _unit_ids(a, m, kind, where)))
    return picked


def _execute(loaded: LoadedModel, plan: Plan, note: Progress) -> dict[str, Any]:
    """Prune ``loaded.model`` in place; returns the per-action record and notes."""
    from .surgery import slice_cuts, zero_units

    model = loaded.model
    actions = plan.actions
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    element_actions = [(i, a) for i, a in enumerate(actions)
                       if Target.parse(a.target).kind == "group" and not a.is_layer]
    unit_actions = [(i, a) for i, a in enumerate(actions) if Target.parse(a.target).kind == "unit"]
    picked = _unit_picks(model, unit_actions)
    cuts, combined, calibration = _dense_cuts(loaded, plan, element_actions, picked, note)

    for i, a in enumerate(actions):
        records.append({"index": i, "target": a.target, "layers": a.layers,
                        "structure": a.structure, "criterion": a.criterion,
                        "sparsity": a.sparsity, "requested": a.execution,
                        "execution": "zero", "elements_zeroed": 0, "units_removed": {}, "note": ""})

    # 1. reconstructed values (OBS updates, FLAP bias compensation), then the masks -> zeros (all
    # computed on the dense model; a tensor two actions cut was solved once on the union of their masks)
    write_cut(dict(model.named_parameters()), combined.mask, combined.values)
    for i, cut in cuts.items():
        records[i]["elements_zeroed"] = pruned_count(cut.mask)
        records[i]["units_removed"] = None
        records[i]["zeroed_params"] = sorted(name for name, keep in cut.mask.items() if not bool(keep.all()))

    # 2. unit actions -> zeros; remember the removed ids per (kind, layer) for slicing
    removed: dict[str, dict[int, set[int]]] = {}
    sliceable: dict[str, bool] = {}
    for i, kind, m, ids in picked:
        family = m.unit_family(kind)
        if ids:
            zeroed = unit_mask(m, family, torch.tensor(ids))
            records[i]["elements_zeroed"] += pruned_count(zeroed)
            records[i]["zeroed_params"] = sorted({*records[i].get("zeroed_params", ()),
                                                  *(name for name, keep in zeroed.items() if not bool(keep.all()))})
            zero_units(m, kind, ids)
        records[i]["units_removed"][str(m.layer)] = len(ids)
        removed.setdefault(kind, {}).setdefault(m.layer, set()).update(ids)
        sliceable[kind] = sliceable.get(kind, True) and actions[i].execution == "slice"

    # 3. slice what the plan asks to slice; surgery.slice_cuts is also what the planner asked, so a
    # kind it refuses here was planned as zeros (only a hand-edited plan meets a refusal)
    kind_actions: dict[str, list[int]] = {}
    for i, kind, _, _ in picked:
        kind_actions.setdefault(kind, [])
        if i not in kind_actions[kind]:
            kind_actions[kind].append(i)
    note(0, 1, "slicing units")
    outcomes = slice_cuts(model, {kind: removed[kind] for kind in removed if sliceable[kind]})
    sliced: list[dict[str, Any]] = []
    for kind, outcome in outcomes.items():
        if not outcome.sliced:
            _set_note(records, kind_actions[kind], outcome.reason)
            notes.append(outcome.reason)
            continue
        for i in kind_actions[kind]:
            records[i]["execution"] = "slice"
        if kind in ("head", "head_channel"):
            notes.append(f"sliced Mamba-2 {kind} units: the gated norm's weights were rescaled, so the logits equal "
                         "the zeroed model's up to the norm's eps term (not bit for bit); the plan measured "
                         "this sliced form")
        per_layer = {layer: ids for layer, ids in removed[kind].items() if ids}
        sliced.append({"kind": kind, "layers": sorted(per_layer),
                       "removed_per_layer": len(next(iter(per_layer.values()))), "config": outcome.config})

    # 4. whole layers, last: every action above addressed the plan's (the original model's) layer numbers
    _remove_layers(model, actions, records, notes, note)
    return {"actions": records, "sliced": sliced, "notes": notes, "calibration": calibration}


def _remove_layers(model: torch.nn.Module, actions: list[PlanAction], records: list[dict[str, Any]],
                   notes: list[str], note: Progress) -> None:
    """Remove the decoder layers the plan's ``layers`` actions name (one line when they cannot go) and
    rename the zeroed tensors the records list as the reduced model names them (recover reads them)."""
    from .layers import layers_path, remove_checked, renamed

    chosen = [(i, a) for i, a in enumerate(actions) if a.is_layer]
    if not chosen:
        return
    drop = sorted({layer for _, a in chosen for layer in a.layers})
    note(0, 1, f"removing layer(s) {drop}")
    path = layers_path(model)
    before = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    try:
        mapping = remove_checked(model, drop)
    except ValueError as err:
        raise PlanError(f"plan action(s) {[i for i, _ in chosen]} ({LAYERS}): {err}") from None
    freed = before - sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    for i, a in chosen:
        records[i].update(execution="remove", units_removed=None, zeroed_params=[],
                          note=f"decoder layer(s) {a.layers} removed")
    for r in records:
        if r.get("zeroed_params"):
            r["zeroed_params"] = renamed(r["zeroed_params"], mapping, path)
    notes.append(f"removed decoder layer(s) {drop} after every other action ({freed:,} parameters); the saved "
                 f"model numbers its layers 0..{len(mapping) - 1}, the actions keep the plan's numbering")


def _set_note(records: list[dict[str, Any]], indices: list[int], text: str) -> None:
    for i in indices:
        records[i]["note"] = (records[i]["note"] + "; " if records[i]["note"] else "") + text


# --------------------------------------------------------------------------------------------
# entry point


def _check_output(out: Path, loaded: LoadedModel, plan: Plan, overwrite: bool) -> None:
    """The output must be new (or ``overwrite``) and apart from what apply reads: the model's folder, its
    tokenizer's folder and the plan's texts (:func:`ssm_profile.base.outputs.check_paths`)."""
    from ..base.outputs import Input, Output, check_paths, source_input

    origin = loaded.source
    inputs = [None if origin.kind.startswith("hub") else Input(Path(origin.location), "the model folder"),
              source_input(loaded.tokenizer_path, "the tokenizer folder")]
    if plan.data is not None:
        spec = plan.data.spec()
        inputs += [source_input(spec.calibration, "the plan's calibration text"),
                   source_input(spec.evaluation, "the plan's evaluation text")]
    inputs += [source_input(d.source, "the plan's --also-on text") for d in plan.domains or ()]
    check_paths([Output(out, "output", folder=True, overwrite=overwrite)], inputs)


def _totals(totals: AnalysisTotals) -> Totals:
    """The part of the static analysis' totals a pruning record keeps."""
    return Totals(parameters=totals.parameters, bytes=totals.bytes, flops_per_token=totals.flops_per_token,
                  state_bytes_per_sequence=totals.state_bytes_per_sequence)


def apply_plan(loaded: LoadedModel, plan: Plan | dict[str, Any] | str | Path, output_dir: str | Path,
               validate: bool = False, overwrite: bool = False, progress: Progress | None = None,
               validate_options: ValidationOptions | None = None, allow_broken_promise: bool = False) -> PruningRecord:
    """Prune ``loaded.model`` (in place) as ``plan`` says and save it to ``output_dir``.

    Returns the record written to ``output_dir/pruning.json`` (with ``output_dir`` and, with
    ``validate=True``, the :class:`ValidationReport` of :func:`ssm_profile.validation.check.validate`, which is
    also written to ``output_dir/validation.json``; ``validate_options`` are passed on to it).
    Raises :class:`PlanError` for a plan made for other weights or one whose promise broke when it was
    made (``plan.promise_kept`` False; applied, with a note, when ``allow_broken_promise``), with nothing
    written, and :class:`OutputExistsError` when ``output_dir`` exists and ``overwrite`` is false.
    """
    from ..model.analysis import analyze
    from .surgery import is_expressible

    note = progress or (lambda done, total, label: None)
    plan = load_plan(plan) if isinstance(plan, (str, Path)) else as_plan(plan)
    broken = check_promise_kept(plan, "the plan", allow=allow_broken_promise)  # before anything is read or written
    out = Path(output_dir).expanduser()
    _check_output(out, loaded, plan, overwrite)
    started = time.perf_counter()
    note(0, 3, "checking the plan against the model")
    base_fingerprint = loaded.fingerprint  # before anything changes the weights
    plan.check_model(loaded)
    model = loaded.model
    before = count_parameters(model)
    totals_before = analyze(model).totals
    was_training = model.training
    model.eval()

    note(1, 3, "pruning")
    executed = _execute(loaded, plan, lambda done, total, label: note(1, 3, label))
    after = count_parameters(model)
    totals_after = analyze(model).totals
    ok, problems = is_expressible(model)
    if not ok:  # pragma: no cover - every slice was checked by sync_config
        raise SSMProfileError(f"the pruned model cannot be saved with a stock config: {problems[0]}")
    loaded._fingerprint = None

    record = PruningRecord(
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=PrunedFrom(name=loaded.source.name, source=ModelOrigin.from_dict(asdict(loaded.source)),
                          fingerprint=base_fingerprint, class_name=type(model).__name__),
        output=PrunedOutput(fingerprint=loaded.fingerprint),
        summary=PruningSummary(actions=len(plan.actions),
                               sliced=sum(r["execution"] == "slice" for r in executed["actions"]),
                               zeroed=sum(r["execution"] == "zero" for r in executed["actions"]),
                               removed=sum(r["execution"] == "remove" for r in executed["actions"]),
                               objective=plan.objective, predicted=plan.predicted, dense=plan.dense),
        parameters=ParameterCounts(before=before["total"], after=after["total"], nonzero_before=before["nonzero"],
                                   nonzero_after=after["nonzero"], removed=before["total"] - after["total"],
                                   zeroed_or_removed=before["nonzero"] - after["nonzero"]),
        analysis=TotalsChange(before=_totals(totals_before), after=_totals(totals_after)),
        actions=[ExecutedAction.from_dict(r) for r in executed["actions"]],
        sliced=[SlicedUnits.from_dict(s) for s in executed["sliced"]],
        notes=executed["notes"] + ([broken] if broken else []),
        calibration=RunData.from_dict(executed["calibration"]) if executed["calibration"] else None, plan=plan,
        versions={"ssm-profile": __version__, "torch": torch.__version__})

    note(2, 3, "saving")
    _save(loaded, record, out, overwrite, started)
    model.train(was_training)
    note(3, 3, "saved")
    record.output_dir = str(out)
    if validate:
        record.validation = _validate(loaded, plan, out, progress, validate_options)
    return record


def _save(loaded: LoadedModel, record: PruningRecord, out: Path, overwrite: bool, started: float) -> None:
    with atomic_directory(out, overwrite=overwrite) as tmp:
        loaded.model.save_pretrained(tmp)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(tmp)
        record.output.files = sorted(p.name for p in tmp.iterdir())
        record.output.bytes_on_disk = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        record.timings = {"total": round(time.perf_counter() - started, 3)}
        write_json_atomic(tmp / PRUNING_FILE, record.to_dict())


def _validate(loaded: LoadedModel, plan: Plan, out: Path, progress: Progress | None,
              options: ValidationOptions | None):
    from ..model.resolve import load_model

    base = reload_source(loaded, plan)
    pruned = load_model(str(out), dtype=next(loaded.model.parameters()).dtype)
    validation = run_validation(base, pruned, plan, options, progress=progress, pruned_dir=out)
    write_json_atomic(out / VALIDATION_FILE, validation.to_dict())
    return validation


def reload_source(loaded: LoadedModel, plan: Plan | None = None) -> LoadedModel:
    """Load the (unpruned) model ``loaded`` came from again, with the same dtype and device."""
    from ..documents import check_weights
    from ..model.resolve import load_model

    src = loaded.source
    name = src.location if src.kind.startswith("local") else src.name
    p = next(loaded.model.parameters())
    base = load_model(name, dtype=p.dtype, device=str(p.device), revision=None)
    if plan is not None:
        check_weights(plan.model.fingerprint, base, "plan was made for", expected_name=plan.model.name,
                      hint=f"'{src.name}' changed on disk since the plan was made; validate against the "
                      "original weights")
    return base
