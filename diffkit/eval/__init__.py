"""Evaluation: sample metrics, image metrics and the likelihood."""
