"""The HTML doors: every page and form blueprint (dashboard, auth, settings, hosts, jobs).

They parse the request, call ``app.services``, commit through ``app.transaction`` and
render. They never import ``app.api`` (the JSON door onto the same services).
"""
