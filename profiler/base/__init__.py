"""Base: what every other wing stands on and that knows nothing of models.

Errors a user reads (``errors``), wording of numbers (``fmt``), atomic files and bounded reads
(``io``, ``safe_read``), the one rule every output obeys (``outputs``), the run-directory and output
locks (``lock``), process set-up (``runtime``), the generic registry (``registry``), per-instance
patching (``patching``) and torch-free defaults (``defaults``). Nothing here imports another wing.

The public face below is what the other wings use; ``face`` makes every wing's face lazy.
"""

from __future__ import annotations

from .face import lazy_face

__all__, __getattr__ = lazy_face(__name__, {
    ".errors": ("SSMProfileError", "DataError", "HubUnreachableError", "ModelNotFoundError", "OutputExistsError",
                "PlanError", "RunDirError", "UnsupportedModelError", "first_line"),
    ".defaults": ("DEFAULT_CRITERIA", "DEFAULT_SPARSITIES", "DEFAULT_TOLERANCE", "RECOVER_LR", "RECOVER_STEPS",
                  "RECOVER_TEMPERATURE"),
    ".fmt": ("METRIC_NOUNS", "agreement_text", "amount", "human_bytes", "human_count", "parse_proportion",
             "percent_of", "scope_name", "share"),
    ".io": ("atomic_directory", "free_path", "write_json_atomic", "write_text_atomic"),
    ".safe_read": ("DATA_LIMIT", "JOURNAL_LIMIT", "JSON_LIMIT", "read_user_file", "read_user_json", "read_user_text"),
    ".outputs": ("Input", "Output", "check_paths", "data_inputs", "folder_files", "source_input", "text_input"),
    ".lock": ("LOCK_NAME", "output_lock", "run_dir_lock"),
    ".runtime": ("FAST_KERNELS_ENV", "SMALL_MODEL", "available_memory", "check_threads",
                 "configure_threads", "fast_kernels_enabled", "quiet_libraries"),
    ".registry": ("NameClashError", "Registry"),
    ".patching": ("forwards_overridden",),
    ".face": ("lazy_face",),
})
