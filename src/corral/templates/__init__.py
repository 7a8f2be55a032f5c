"""Template root filesystems: recipes, the mmdebstrap builder and the cache."""

from .builder import ensure_template, list_templates, template_path

__all__ = ["ensure_template", "list_templates", "template_path"]
