"""PREPO inside other trainers: TRL (``prepo.integrations.trl``) and verl (``prepo.integrations.verl``).

Each submodule imports its framework, so import the one you use; this package itself imports neither.
"""
