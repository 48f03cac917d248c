"""An install ships only the library: `jaxps` and its subpackages, not `models` or `train`
(top-level names other projects use too); those run from the checkout (README "Layout")."""

import tomllib

from setuptools import find_packages

from tests.conftest import REPO


def test_only_jaxps_is_installed():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(REPO), include=find["include"], exclude=find.get("exclude", ()))
    assert "jaxps" in packages and "jaxps._src" in packages, packages
    assert all(p == "jaxps" or p.startswith("jaxps.") for p in packages), packages

