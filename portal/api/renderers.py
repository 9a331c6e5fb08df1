"""JSON answers written by orjson, so that a long list's packages go out as the database
gave them: a version's `package`, read as JSON text (portal.api.model_list), is an
orjson.Fragment, put in the answer as it is, never parsed and written again (parsing and
writing 50 packages of ~5 KB took ~5 ms of CPU, more than the rest of the page)."""

import orjson
from rest_framework.renderers import JSONRenderer
from rest_framework.utils.encoders import JSONEncoder

# What orjson does not write itself (lazy translations, decimals, ...), as DRF writes it.
_drf = JSONEncoder()


class FastJSONRenderer(JSONRenderer):
    """DRF's JSONRenderer (the same media type, compact, UTF-8) through orjson."""

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        if data is None:
            return b""
        option = orjson.OPT_NON_STR_KEYS
        if self.get_indent(accepted_media_type or "", renderer_context or {}):
            option |= orjson.OPT_INDENT_2
        return orjson.dumps(data, default=_drf.default, option=option)
