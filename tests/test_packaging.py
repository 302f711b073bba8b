"""pyproject.toml: every console script runs a tool's entry point, and every package is installed."""

import ast
import os
import re
import tomllib

from conftest import ROOT


def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        return tomllib.load(handle)


def test_each_console_script_is_the_entry_point_of_a_tool():
    project = _pyproject()
    package_dir = project["tool"]["setuptools"]["package-dir"]
    scripts = project["project"]["scripts"]
    assert {"keras-dc-train", "keras-dc-probe", "keras-dc-visualize"} <= set(scripts)
    for target in scripts.values():
        module, function = target.split(":")
        package, name = module.split(".")
        path = os.path.join(ROOT, package_dir[package], name + ".py")
        tree = ast.parse(open(path).read())
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert function in functions, target
        main_block = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
        assert ast.unparse(main_block[0].body[0]) == f"{function}()", path  # the same program either way


def test_every_tool_has_a_console_script():
    scripts = _pyproject()["project"]["scripts"].values()
    tools = {name[:-3] for name in os.listdir(os.path.join(ROOT, "tools")) if name.endswith(".py")}
    assert tools == {target.split(":")[0].split(".")[1] for target in scripts}


def test_every_package_of_keras_dc_is_installed():
    packages = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = {os.path.relpath(folder, ROOT).replace(os.sep, ".")
             for folder, _, files in os.walk(os.path.join(ROOT, "keras_dc")) if "__init__.py" in files}
    assert found | {"keras_dc_tools"} == packages


def test_licence_is_apache_2():
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert "Apache License" in open(os.path.join(ROOT, "LICENSE")).read(2000)


def test_readme_and_build_name_every_console_script():
    scripts = set(_pyproject()["project"]["scripts"])
    for name in ("README.md", "BUILD.md"):
        named = set(re.findall(r"`(keras-dc-[a-z-]+)`", open(os.path.join(ROOT, name)).read()))
        assert named == scripts, name
