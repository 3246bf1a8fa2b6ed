"""Business rules as plain functions: explicit arguments, ``flush()`` but never ``commit()``.

Views (HTML, /api/v1, agent API) call these and commit once.
"""
