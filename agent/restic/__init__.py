"""Wrapping the restic CLI: argv builders (pure), one subprocess seam, error classes."""
