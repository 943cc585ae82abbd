"""Evaluation: BSSEval v4 (the fast exact evaluator and museval) and SiSEC-style scoring of test tracks."""
