"""Evaluators: accuracy, size and latency of compressed models."""
