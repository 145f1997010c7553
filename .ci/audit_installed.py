"""Known vulnerabilities of what a venv holds, from PyPI's per-project JSON API: the fallback of .ci/run where
pip-audit's services (PyPI's per-release JSON, OSV) do not answer but the per-project one does.

PyPI lists, in ``/pypi/<project>/json``, the known vulnerabilities of the project's latest release only. So a
package installed at its latest release is checked (its vulnerabilities are listed and fail the run); one held
at an older release (a constraint, a pin) cannot be checked this way and is named as not checked. Run it with
the venv's python: ``.venv/bin/python .ci/audit_installed.py``. Exit status: 1 when a vulnerability is found
or PyPI does not answer, else 0.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import distributions


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def latest(name: str) -> tuple[str, list[dict]] | None:
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=20) as answer:
            data = json.load(answer)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:          # not on PyPI (this project itself, a local build)
            return None
        raise
    return data["info"]["version"], data.get("vulnerabilities") or []


def main() -> int:
    installed = {normalized(d.metadata["Name"]): d.version for d in distributions() if d.metadata["Name"]}
    installed.pop("clarion", None)
    with ThreadPoolExecutor(8) as pool:
        answers = dict(zip(installed, pool.map(latest, installed), strict=True))
    found, unchecked = [], []
    for name, version in sorted(installed.items()):
        answer = answers[name]
        if answer is None:
            unchecked.append(f"{name} {version} (not on PyPI)")
        elif answer[0] != version:
            unchecked.append(f"{name} {version} (latest {answer[0]})")
        else:
            found += [f"{name} {version}: {v.get('id')} {', '.join(v.get('aliases') or [])} fixed in "
                      f"{', '.join(v.get('fixed_in') or []) or '?'}" for v in answer[1]]
    checked = len(installed) - len(unchecked)
    print(f"audit: {checked} of {len(installed)} installed packages are at their latest release and were checked "
          f"against PyPI's known vulnerabilities; {len(found)} found")
    for line in found:
        print(f"  VULNERABLE {line}")
    if unchecked:
        print(f"  not checked (an older release: PyPI lists vulnerabilities of the latest only): {', '.join(unchecked)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
