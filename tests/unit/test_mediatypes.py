"""The media types live in one standard-library module that the codecs, the settings and byoctl share."""

from __future__ import annotations

import subprocess
import sys

from byoctl import payloads
from mxnet_byoc.serve import codecs, mediatypes


def test_byoctl_guesses_exactly_the_types_the_server_decodes():
    assert set(payloads.CONTENT_TYPES.values()) == set(mediatypes.REQUEST_TYPES) == set(codecs._DECODERS)


def test_byoctl_gets_the_names_without_the_servers_dependencies():
    code = ("import sys; import byoctl.payloads; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'simdjson', 'orjson', 'PIL', 'flask')"
            " or m.startswith('mxnet_byoc.serve.') and m != 'mxnet_byoc.serve.mediatypes'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_media_type_drops_parameters_and_case():
    assert mediatypes.media_type("Text/CSV; charset=utf-8") == "text/csv"
    assert mediatypes.media_type(None) == mediatypes.media_type("") == ""


def test_a_concrete_type_has_a_type_and_a_subtype_and_no_wildcard():
    assert mediatypes.is_concrete("application/x-npy") and mediatypes.is_concrete("application/vnd.a+json")
    assert not any(mediatypes.is_concrete(t) for t in ("*/*", "text/*", "json", "/json", "text/", "text/ csv"))
