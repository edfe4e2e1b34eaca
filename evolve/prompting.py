"""Rendering the optimizer's prompts: jinja2 templates in ``evolve/prompts/``, StrictUndefined."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

PROMPTS = Path(__file__).parent / "prompts"


@lru_cache(maxsize=1)
def _env():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(PROMPTS)), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)


def render(name: str, **context) -> str:
    """Render ``evolve/prompts/<name>`` with ``context``.

    Raises:
        jinja2.UndefinedError: the template uses a variable ``context`` does not give (a bug, not the model's).
        jinja2.TemplateNotFound: no such template.
    """
    return _env().get_template(name).render(**context)
