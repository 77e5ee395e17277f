"""Library log noise is hidden by default and shown with --verbose (issue 11, item 9)."""
import os
import subprocess
import sys

from shared_paths import REPO_ROOT

IMPORT_BEAM_LIKE_THE_FEATURES_COMMAND = (
    "import sys, logging; from personalize_t5x import cli\n"
    "if sys.argv[1] == 'quiet': cli.quiet_library_noise()\n"
    "import apache_beam\n"
    "from apache_beam.options.pipeline_options import PipelineOptions\n"
    "PipelineOptions(['--not-a-beam-flag', 'x']).get_all_options()\n"
    "logging.getLogger('personalize_t5x').warning('a warning of our own')\n"
)


def _stderr(mode: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", IMPORT_BEAM_LIKE_THE_FEATURES_COMMAND, mode],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_beam_noise_is_quiet_by_default_and_shown_when_verbose():
    loud, quiet = _stderr("verbose"), _stderr("quiet")
    assert "apitools" in loud or "Discarding unparseable args" in loud, "nothing to hide: the check proves nothing"
    assert "apitools" not in quiet and "Discarding unparseable args" not in quiet, quiet
    assert "a warning of our own" in quiet and "a warning of our own" in loud


def test_verbose_flag_is_taken_off_the_command_line():
    from personalize_t5x import cli

    assert cli.main(["corpus", "stats", "--verbose", "--input", "/nonexistent.jsonl"]) == 2
