"""The files that pass from one stage to the next, as typed objects: plan, pruning record, validation.

``plan.json`` (:class:`Plan`, written by ``ssm-profile plan``), ``pruning.json``
(:class:`PruningRecord`, written by ``apply``) and ``validation.json`` (:class:`ValidationReport`,
written by ``validate``). Each has ``to_dict``/``from_dict``; ``to_dict(from_dict(x)) == x`` for
every file the tool writes (unknown keys are kept in ``extra``), so the files stay exactly as they
were. The JSON Schema in ``profiler/schemas/plan.schema.json`` is the file contract and the only
validator of plan files (:func:`validate_plan`).

Torch-free: reports and the TUI read these files without loading a model.
"""

from ._base import _extra as extra_field, _optional as optional_field  # for documents defined in other wings
from ._base import LM_EVAL_LOG, PRUNING_FILE, RECOVERY_FILE, VALIDATION_FILE, Document
from .plan import (LAYERS, OLD_CERTIFICATION_RULE, Certification, Dense, DomainCheck, Increase, Measured, ModelOrigin,
                   Objective, Plan, PlanAction, PlanData, PlanModel, PlanRecover, PlanRun, Predicted, Verification,
                   actions_digest, as_plan, check_not_edited, check_promise_kept, check_weights, load_plan, one_line,
                   validate_plan, write_plan)
from .data import RunData
from .usage import ForwardCheck, MixerUsage, read_mixer_usage
from .pruning import (ExecutedAction, ParameterCounts, PrunedFrom, PrunedOutput, PruningRecord, PruningSummary,
                      SlicedUnits, Totals, TotalsChange, load_pruning_record)
from .recovery import (CurvePoint, RecoveredFrom, RecoveryCheck, RecoveryData, RecoveryKernels, RecoveryOutput,
                       RecoveryProgress, RecoveryRecord, RecoverySettings, RecoveryWorld,
                       Sparsity, Teacher, load_recovery)
from .validation import (AgainstPlan, ComparedModels, DomainIncrease, LmEval, LossPerplexity, ModelRef, ModelSize, PairedChange,
                         PlanSummary, SearchPerplexity, Sizes, Speed, SpeedChange, TaskScores, Timing, Tolerance,
                         ValidationReport, load_validation)

__all__ = ["extra_field", "optional_field", "LM_EVAL_LOG", "PRUNING_FILE", "RECOVERY_FILE", "VALIDATION_FILE",
           "Document", "LAYERS", "OLD_CERTIFICATION_RULE", "Certification", "Dense", "DomainCheck", "Increase", "Measured", "ModelOrigin",
           "Objective", "Plan", "PlanAction",
           "PlanData", "PlanModel", "PlanRecover", "PlanRun", "Predicted", "Verification", "as_plan",
           "actions_digest", "check_not_edited", "check_promise_kept", "check_weights", "load_plan", "one_line", "validate_plan", "write_plan", "RunData", "ForwardCheck", "MixerUsage", "read_mixer_usage",
           "ExecutedAction", "ParameterCounts", "PrunedFrom", "PrunedOutput",
           "SlicedUnits", "Totals", "TotalsChange", "PruningRecord",
           "PruningSummary", "load_pruning_record", "CurvePoint", "RecoveredFrom", "RecoverySettings", "RecoveryCheck", "RecoveryData", "RecoveryKernels", "RecoveryWorld",
           "RecoveryOutput", "RecoveryProgress", "RecoveryRecord", "Sparsity", "Teacher", "load_recovery",
           "AgainstPlan", "ComparedModels", "DomainIncrease", "PlanSummary", "LmEval", "LossPerplexity", "ModelRef", "ModelSize", "PairedChange",
           "SearchPerplexity", "Sizes", "Speed", "SpeedChange", "TaskScores", "Timing", "Tolerance",
           "ValidationReport", "load_validation"]
