"""The pool of pre-started interpreters: kept importable here; it lives in supply.py."""

from .supply import SessionKey, SessionPool, forget_templates, template_of

__all__ = ["SessionKey", "SessionPool", "forget_templates", "template_of"]
