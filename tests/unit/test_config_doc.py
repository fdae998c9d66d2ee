"""docs/configuration.md lists every setting with its real default."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO


def test_configuration_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location(
        "gen_config_doc", REPO / "tools" / "gen-config-doc.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == module.render(), (
        "docs/configuration.md is stale: run tools/gen-config-doc.py"
    )
