"""Evaluator building blocks shared by tasks, usable as a library."""
