"""Tiny-set recovery: train adapters so the student's features mimic the teacher's."""
