"""The package as a user gets it: the wheel's contents, an install outside the checkout, the commands.

The wheel is built offline from a copy of the package sources (`pip wheel --no-deps
--no-build-isolation`) and installed with `pip install --no-deps` into a fresh venv in a
temporary folder whose only view of the dependencies is a `.pth` line naming this
environment's site-packages; everything then runs from a temporary folder without
PYTHONPATH, so nothing can come from the checkout.
"""

import ast
import configparser
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

import numpy as np
import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.xdist_group("test_packaging")  # one worker builds the wheel and venv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("axial_keras", "trainer", "export")
PYPROJECT = os.path.join(REPO, "pyproject.toml")
TF_CPP_LINE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|cuInit|oneDNN", re.MULTILINE)
FLAG_LINE = re.compile(r"^  --(?:\[no\])?(\w+): (\S.*)$", re.MULTILINE)

TINY_MODEL = """
import json, sys
import numpy as np
import keras
import axial_keras, export, trainer
from axial_keras.models import get_model
keras.utils.set_random_seed(0)
model = get_model("axial_resnet_tiny", num_classes=3)
images = np.random.RandomState(0).uniform(0.0, 1.0, (2, 32, 32, 3)).astype("float32")
logits = keras.ops.convert_to_numpy(model(images, training=False))
print(json.dumps({"files": [axial_keras.__file__, trainer.__file__, export.__file__],
                  "sys_path": sys.path, "version": axial_keras.__version__,
                  "logits": logits.tolist()}))
"""


def _pyproject() -> dict:
    with open(PYPROJECT, "rb") as file:
        return tomllib.load(file)


def _checkout_modules() -> set:
    """The .py files of the three packages in the checkout, relative to the repository."""
    found = set()
    for package in PACKAGES:
        for path in glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True):
            found.add(os.path.relpath(path, REPO).replace(os.sep, "/"))
    return found


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


def _clean_env() -> dict:
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL", "PYTHONSTARTUP")}
    env["KERAS_BACKEND"] = "tensorflow"
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    """The wheel built from a copy of the checkout's package sources."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), source / name)
    for package in PACKAGES:
        shutil.copytree(os.path.join(REPO, package), source / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          "--no-index", "--wheel-dir", str(dist), str(source)])
    (path,) = glob.glob(str(dist / "*.whl"))
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> str:
    """A fresh venv outside the checkout holding the wheel; dependencies through a .pth."""
    root = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)])
    python = str(root / "bin" / "python")
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                env=_clean_env()).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(os.path.join(site, "dependencies.pth"), "w", encoding="utf-8") as file:
        file.write("".join(f"{path}\n" for path in sorted(ours)))
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
          "--no-index", "--ignore-installed", wheel])
    return str(root)


def test_wheel_holds_every_module_and_no_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    modules = {name for name in names if name.endswith(".py")}
    assert modules == _checkout_modules()
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/"))]
    version = ast.literal_eval(re.search(r'__version__ = ("[^"]+")', open(
        os.path.join(REPO, "axial_keras", "__init__.py"), encoding="utf-8").read()).group(1))
    assert os.path.basename(wheel).startswith(f"axial_keras-{version}-py3-none-any")
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(zipfile.ZipFile(wheel).read(entry_points).decode())
    assert dict(parser["console_scripts"]) == _pyproject()["project"]["scripts"]


def test_lock_satisfies_the_declared_ranges():
    """Every pin of requirements*.txt lies in pyproject.toml's range for that package."""
    project = _pyproject()["project"]
    declared = {}
    for line in project["dependencies"] + sum(project["optional-dependencies"].values(), []):
        requirement = Requirement(line)
        if requirement.name != "axial-keras":
            declared.setdefault(requirement.name.lower(), []).append(requirement.specifier)
    pins = {}
    for path in glob.glob(os.path.join(REPO, "requirements*.txt")):
        for line in open(path, encoding="utf-8"):
            line = line.split("#")[0].strip()
            if line:
                requirement = Requirement(line)
                pins[requirement.name.lower()] = next(iter(requirement.specifier)).version
    missing = sorted(set(declared) - set(pins) - {"tensorflow[and-cuda]"})
    assert not missing, f"declared but not locked: {missing}"
    for name, specifiers in declared.items():
        for specifier in specifiers:
            assert specifier.contains(pins[name]), f"{name}=={pins[name]} not in {specifier}"


def test_installed_wheel_runs_a_model_outside_the_checkout(venv, tmp_path):
    python = os.path.join(venv, "bin", "python")
    installed = _run([python, "-c", TINY_MODEL], cwd=tmp_path, env=_clean_env())
    reference = _run([sys.executable, "-c", TINY_MODEL], cwd=REPO,
                     env={**_clean_env(), "PYTHONPATH": REPO})
    got, want = json.loads(installed.stdout), json.loads(reference.stdout)
    for path in got["files"]:
        assert os.path.realpath(path).startswith(os.path.realpath(venv) + os.sep), path
    assert os.path.realpath(REPO) not in {os.path.realpath(p) for p in got["sys_path"] if p}
    # The dependencies come from this venv's site-packages (inside the checkout in a
    # fresh clone: .venv/); nothing else of the checkout may be on the path.
    dependencies = os.path.realpath(sys.prefix) + os.sep
    assert not [p for p in got["sys_path"] if p and os.path.realpath(p).startswith(
        os.path.realpath(REPO) + os.sep) and not os.path.realpath(p).startswith(dependencies)]
    assert want["files"][0] == os.path.join(REPO, "axial_keras", "__init__.py")
    assert got["version"] == want["version"]
    logits = np.array(got["logits"])
    assert logits.shape == (2, 3)
    assert np.isfinite(logits).all() and np.ptp(logits) > 1e-3
    np.testing.assert_allclose(logits, np.array(want["logits"]), rtol=1e-5, atol=1e-6)


def _defined_flags(module: str, function_name: str = "define_flags") -> set:
    """The flag names `module`'s `define_flags` defines, read from its source (following
    the flag-defining helpers it calls, e.g. `export.saved_model.define_preset_flags`)."""
    path = os.path.join(REPO, *module.split(".")) + ".py"
    tree = ast.parse(open(path, encoding="utf-8").read())
    (function,) = [node for node in tree.body
                   if isinstance(node, ast.FunctionDef) and node.name == function_name]
    imported = {alias.name: node.module for node in tree.body
                if isinstance(node, ast.ImportFrom) and node.module for alias in node.names}
    names = set()
    for node in ast.walk(function):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute) and node.func.attr.startswith("DEFINE_"):
            names.add(node.args[0].value)
        elif isinstance(node.func, ast.Name) and node.func.id.startswith("define_"):
            names |= _defined_flags(imported.get(node.func.id, module), node.func.id)
    return names


HELP_OF_EVERY_COMMAND = """
import importlib.metadata, json, sys
from absl import flags
from axial_keras import cli
helps = {}
for command, module_name in json.loads(sys.argv[1]).items():
    entry = [e for e in importlib.metadata.entry_points(group="console_scripts")
             if e.name == command]
    assert len(entry) == 1 and callable(entry[0].load()), command
    module = importlib.import_module(module_name)
    before = set(flags.FLAGS)
    module.define_flags()
    own = sorted(set(flags.FLAGS) - before)
    helps[command] = cli.help_text(module.__doc__, own)
    for name in own:
        delattr(flags.FLAGS, name)
print(json.dumps(helps))
"""


def _listed_flags(help_text: str) -> dict:
    """{flag: meaning} of the program's own flags in a `--help` text."""
    own = help_text.split("\nflags:\n", 1)[1].split("\n  --verbosity (-v)", 1)[0]
    return dict(FLAG_LINE.findall(own))


def test_console_commands_list_their_flags(venv, tmp_path):
    """`axial-keras-predict --help` from the wheel: exit status 0, its flags with their
    meaning, no TensorFlow C++ start-up lines; every other console command's entry point
    loads and its help lists each flag its module defines, with a meaning."""
    source = open(os.path.join(REPO, "axial_keras", "commands.py"), encoding="utf-8").read()
    modules = {}
    for command, target in _pyproject()["project"]["scripts"].items():
        module_name, function = target.split(":")
        assert module_name == "axial_keras.commands"
        (modules[command],) = re.findall(
            rf'def {function}\(\).*?cli\.launch\("([\w.]+)"\)', source, re.DOTALL)
    predict = subprocess.run([os.path.join(venv, "bin", "axial-keras-predict"), "--help"],
                             cwd=tmp_path, env=_clean_env(), capture_output=True, text=True)
    assert predict.returncode == 0, predict.stderr
    assert not TF_CPP_LINE.search(predict.stdout + predict.stderr), predict.stderr
    assert _listed_flags(predict.stdout) == {
        "model": "A SavedModel directory, .tflite or .onnx file.",
        "output_dir": "Where the PNGs and segment lists go.",
        "preset": "A model zoo preset name, or a local deeplab2 .tar.gz, checkpoint,",
        "spans": "Attention span per stage for --preset, e.g. none,65,65,65,65 (the"}
    helps = json.loads(_run([os.path.join(venv, "bin", "python"), "-c",
                             HELP_OF_EVERY_COMMAND, json.dumps(modules)],
                            cwd=tmp_path, env=_clean_env()).stdout)
    assert helps["axial-keras-predict"] == predict.stdout
    for command, module_name in modules.items():
        assert set(_listed_flags(helps[command])) == _defined_flags(module_name), command


def test_trainer_without_orbit_names_the_install_step(venv, tmp_path):
    """`import trainer` and `axial-keras-train` without Orbit: one line saying what to install."""
    python = os.path.join(venv, "bin", "python")
    hide_orbit = "import sys; sys.modules['orbit'] = None; "
    result = subprocess.run(
        [python, "-c", hide_orbit + "sys.argv = ['axial-keras-train', '--model_dir=x']; "
         "from axial_keras.commands import train; train()"],
        cwd=tmp_path, env=_clean_env(), capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == ("error: the trainer needs Orbit, which ships only inside "
                             "tf-models-official: pip install --no-deps "
                             "tf-models-official==2.20.0\n")
    result = subprocess.run([python, "-c", hide_orbit + "import trainer"], cwd=tmp_path,
                            env=_clean_env(), capture_output=True, text=True)
    assert result.stderr.strip().splitlines()[-1] == (
        "ImportError: the trainer needs Orbit, which ships only inside tf-models-official: "
        "pip install --no-deps tf-models-official==2.20.0")
