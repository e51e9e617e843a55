"""The evaluation matrix and its incremental, resumable results store."""
from advrepair.evaluation.harness import CLEAN, AttackSpec, ModelEntry, evaluate_attack, evaluate_matrix
from advrepair.evaluation.metrics import Accuracy, accuracy_of, images_for_stderr
from advrepair.evaluation.store import ResultsStore, record_key
from advrepair.evaluation.worst_case import worst_case

__all__ = ["CLEAN", "AttackSpec", "ModelEntry", "evaluate_attack", "evaluate_matrix", "Accuracy", "accuracy_of",
           "images_for_stderr", "ResultsStore", "record_key", "worst_case"]
