"""Online scoring: models that answer HTTP requests from warm sandboxes (DESIGN.md)."""
