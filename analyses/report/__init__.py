"""The analysis report: report.json (schema-validated), report.md and a self-contained report.html."""
