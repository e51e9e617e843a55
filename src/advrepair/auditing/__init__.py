"""Audit any test-time defense: ``audit(classifier, defense, images, labels, eps=...)``."""
from advrepair.auditing.presets import PRESETS, AuditPreset, PresetBudget
from advrepair.auditing.report import AuditFlag, AuditReport, AuditRow, comparison_table
from advrepair.auditing.run import audit

__all__ = ["PRESETS", "AuditFlag", "AuditPreset", "AuditReport", "AuditRow", "PresetBudget", "audit", "comparison_table"]
