"""A griffe extension for the API reference (mkdocs.yml): the docstrings are written for
plain text and Sphinx (``:func:`rollout```, ````x````); shown as Markdown, a role becomes a
code span (``rollout``) and a double-backquoted literal a single-backquoted one."""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|obj|exc|const):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def _markdown(text: str) -> str:
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    return _LITERAL.sub(lambda m: f"`{m.group(1)}`", text)


class RstRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _markdown(obj.docstring.value)
