"""`make test` relies on `--dist loadgroup` keeping an `xdist_group` on one worker (its
expensive module fixture is then built once): pytest 9.2 with xdist 3.8 silently split
every group across the workers, which cost the suite minutes."""

import os
import subprocess
import sys
import textwrap

GROUPED_MODULE = textwrap.dedent("""
    import os
    import pytest

    pytestmark = pytest.mark.xdist_group("grouped")

    @pytest.fixture(scope="module")
    def built_once():
        with open(os.environ["SETUP_LOG"], "a") as f:
            f.write(f"{os.getpid()}\\n")

    @pytest.mark.parametrize("i", range(6))
    def test_grouped(built_once, i):
        pass
""")
UNGROUPED_MODULE = textwrap.dedent("""
    import pytest

    @pytest.mark.parametrize("i", range(12))
    def test_free(i):
        pass
""")


def test_an_xdist_group_runs_on_one_worker_with_its_module_fixture_built_once(tmp_path):
    (tmp_path / "test_grouped.py").write_text(GROUPED_MODULE)
    (tmp_path / "test_free.py").write_text(UNGROUPED_MODULE)
    log = tmp_path / "setups.log"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
         "--dist", "loadgroup", str(tmp_path)],
        cwd=tmp_path, env=dict(os.environ, SETUP_LOG=str(log)), capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "18 passed" in result.stdout
    assert len(log.read_text().split()) == 1, "the grouped module's fixture was built per worker"
