"""What to do: findings (a statement, the numbers that triggered it, a confidence, the report section with
the evidence) and the actions they lead to, derived by small rules from the report document."""
