"""An OpenID provider for the sign-in tests: django-oauth-toolkit's, a project of its own
(its own settings and SQLite database) run as a separate process on loopback by server.py.
"""
