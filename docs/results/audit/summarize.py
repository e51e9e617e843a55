"""Rewrite the table in README.md from the audit folders here: python docs/results/audit/summarize.py"""
from pathlib import Path

from advrepair.auditing import AuditReport, comparison_table

HERE = Path(__file__).parent
folders = sorted(p.parent for p in HERE.glob("*/audit.json"))
reports = [AuditReport.from_json((f / "audit.json").read_text()) for f in folders]
table = comparison_table(reports, [f"[{f.name}]({f.name}/audit.md)" for f in folders])
readme = HERE / "README.md"
head = readme.read_text().split("| audit |")[0].replace("TABLE\n", "")
readme.write_text(head + table)
print(table)
