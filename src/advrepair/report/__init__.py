"""Reports: markdown tables and matplotlib figures, read from results, never computed here."""
from advrepair.report.builder import write_report
from advrepair.report.tables import accuracy_table, cost_table

__all__ = ["write_report", "accuracy_table", "cost_table"]
