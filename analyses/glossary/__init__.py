"""The glossary: every metric and column the tool prints, defined once (formula in words, units, how to
read it, source), rendered into report.md/report.html and looked up by table headers and CSV columns."""
