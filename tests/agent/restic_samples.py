"""Reading the captured restic 0.14 runs in fixtures/restic/ (format: restic-samples/README.txt)."""

from pathlib import Path
from typing import List, NamedTuple

FIXTURES = Path(__file__).parent / "fixtures" / "restic"
_STDOUT = "# ===== stdout =====\n"
_STDERR = "# ===== stderr =====\n"


class Sample(NamedTuple):
    exit_code: int
    stdout: str  # the stdout section as restic printed it
    stderr: str

    @property
    def stdout_lines(self) -> List[str]:
        return self.stdout.splitlines()

    @property
    def stderr_lines(self) -> List[str]:
        return self.stderr.splitlines()


def load(name: str) -> Sample:
    """One captured run: exit code, stdout and stderr sections."""
    text = (FIXTURES / name).read_text()
    exit_code = int(text.split("# exit code: ")[1].split("\n")[0])
    stdout = text.split(_STDOUT, 1)[1].split(_STDERR, 1)[0]
    stderr = text.split(_STDERR, 1)[1]
    return Sample(exit_code, stdout, stderr)


def sample(name: str):
    """(exit code, stdout lines, stderr lines) of a captured run."""
    captured = load(name)
    return captured.exit_code, captured.stdout_lines, captured.stderr_lines
